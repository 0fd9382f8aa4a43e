#![cfg(feature = "server")]
//! `tomoe-run serve` end to end on the real SmolLM2 file: the binary is started on a free port
//! and spoken to by real clients (curl, the `openai` Python package, raw sockets): whole and
//! streamed answers, 8 concurrent clients on 2 slots, OpenAI-shaped 4xx errors for bad input,
//! and a client that disconnects freeing its slot.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A running `tomoe-run serve`, killed when dropped.
struct Server {
    child: Child,
    /// e.g. "http://127.0.0.1:40123".
    base: String,
    /// Everything it wrote to stderr so far.
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts the server on SmolLM2 with `args` added, on a port the OS picks, and waits (at
    /// most 60 s) until it says where it listens and /health answers.
    fn start(args: &[&str]) -> Server {
        let model = common::model_path(common::RealModel::SmolLm2);
        let mut child = Command::new(env!("CARGO_BIN_EXE_tomoe-run"))
            .arg("serve")
            .arg("-m")
            .arg(&model)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tomoe-run serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find("listening on ") {
                    let _ = tx.send(line[at + "listening on ".len()..].trim().to_string());
                }
                let mut log = log2.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(base) => base,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the server did not start in 60 s; stderr:\n{}", log.lock().unwrap());
            }
        };
        let server = Server { child, base, log };
        let t0 = Instant::now();
        loop {
            if let Ok((200, body)) = server.try_get("/health") {
                assert_eq!(body["status"], "ok", "{body}");
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "/health did not answer; stderr:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The server's stderr once `ok` holds for it (or after 10 s): a thread reads the pipe, so a
    /// line the server wrote before answering may reach the log a moment after the answer.
    fn log_once(&self, ok: impl Fn(&str) -> bool) -> String {
        let t0 = Instant::now();
        loop {
            let log = self.log();
            if ok(&log) || t0.elapsed() > Duration::from_secs(10) {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn try_get(&self, path: &str) -> Result<(u16, Value), String> {
        let (status, body) = curl(&[&self.url(path)])?;
        let v = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        Ok((status, v))
    }

    /// POSTs `body` (sent as is, so it may be malformed) and returns the status and JSON.
    fn post_raw(&self, path: &str, body: &str) -> (u16, Value) {
        let (status, text) = curl(&[
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
            &self.url(path),
        ])
        .unwrap_or_else(|e| panic!("POST {path}: {e}; stderr:\n{}", self.log()));
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {path}: {e}: {text:?}"));
        (status, v)
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, &body.to_string())
    }

    /// POSTs a streamed request with curl and returns the `data:` payloads, in order.
    fn post_stream(&self, path: &str, body: &Value) -> Vec<String> {
        let (status, text) = curl(&[
            "-N",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body.to_string(),
            &self.url(path),
        ])
        .unwrap();
        assert_eq!(status, 200, "{text}");
        text.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(str::to_string)
            .collect()
    }

    /// /health's count of slots generating.
    fn busy_slots(&self) -> u64 {
        let (status, body) = self.try_get("/health").unwrap();
        assert_eq!(status, 200);
        body["slots_processing"].as_u64().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs curl (bounded to 120 s) and returns the status code and the body.
fn curl(args: &[&str]) -> Result<(u16, String), String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "120", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .map_err(|e| format!("cannot run curl ({e}); install it (.ci/run does)"))?;
    if !out.status.success() {
        return Err(format!("curl failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let text = String::from_utf8(out.stdout).map_err(|e| e.to_string())?;
    let (body, code) = text.rsplit_once('\n').ok_or("no status code")?;
    Ok((
        code.trim().parse().map_err(|e| format!("{e}: {code}"))?,
        body.to_string(),
    ))
}

/// Checks a non-streamed chat answer's shape and returns its text.
fn check_chat(body: &Value) -> String {
    assert_eq!(body["object"], "chat.completion", "{body}");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"), "{body}");
    assert!(body["created"].as_u64().unwrap() > 0, "{body}");
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0, "{body}");
    assert_eq!(choice["message"]["role"], "assistant", "{body}");
    let finish = choice["finish_reason"].as_str().unwrap();
    assert!(finish == "stop" || finish == "length", "{body}");
    let usage = &body["usage"];
    let (p, c, t) = (
        usage["prompt_tokens"].as_u64(),
        usage["completion_tokens"].as_u64(),
        usage["total_tokens"].as_u64(),
    );
    assert!(p.unwrap() > 0 && c.unwrap() > 0, "{body}");
    assert_eq!(p.unwrap() + c.unwrap(), t.unwrap(), "{body}");
    let text = choice["message"]["content"].as_str().unwrap().to_string();
    assert!(!text.trim().is_empty(), "{body}");
    text
}

/// Checks an OpenAI-shaped error and returns it.
fn check_error(status: u16, body: &Value, want_status: u16, what: &str) -> Value {
    assert_eq!(status, want_status, "{what}: {body}");
    let e = &body["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {body}");
    assert_eq!(e["type"], "invalid_request_error", "{what}: {body}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{what}: {body}");
    e.clone()
}

fn chat_request(question: &str, max_tokens: u64) -> Value {
    json!({
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0,
    })
}

#[test]
fn curl_gets_whole_and_streamed_answers() {
    let server = Server::start(&["-c", "512", "-t", "1", "--alias", "smol"]);

    let (status, models) = server.try_get("/v1/models").unwrap();
    assert_eq!(status, 200);
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "smol", "{models}");

    let mut req = chat_request("What is the capital of France?", 16);
    req["model"] = json!("smol");
    let (status, body) = server.post("/v1/chat/completions", &req);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], "smol");
    let text = check_chat(&body);
    assert_eq!(
        body["usage"]["completion_tokens"], 16,
        "greedy SmolLM2 answers this at length: {body}"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "length");

    // The same request streamed: a role delta first, the same text in pieces, a finish reason,
    // then [DONE].
    req["stream"] = json!(true);
    let events = server.post_stream("/v1/chat/completions", &req);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks.len() >= 3, "{events:?}");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant", "{events:?}");
    let mut streamed = String::new();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], chunks[0]["id"]);
        streamed.push_str(c["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
    }
    assert_eq!(streamed, text);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length", "{last}");
    assert!(chunks[..chunks.len() - 1]
        .iter()
        .all(|c| c["choices"][0]["finish_reason"].is_null()));
    // The slot held the first request's prompt: the second evaluated only its last token.
    let n_prompt = body["usage"]["prompt_tokens"].as_u64().unwrap();
    let reused = format!("prompt {n_prompt} tokens ({} reused", n_prompt - 1);
    let log = server.log_once(|log| log.contains(&reused));
    assert!(log.contains(&reused), "{log}");

    // A stop string cuts the answer before it, with finish_reason "stop".
    let words: Vec<&str> = text.split_whitespace().collect();
    assert!(words.len() >= 3, "{text}");
    let mut req = chat_request("What is the capital of France?", 16);
    req["stop"] = json!([words[2]]);
    let (status, body) = server.post("/v1/chat/completions", &req);
    assert_eq!(status, 200, "{body}");
    let cut = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(body["choices"][0]["finish_reason"], "stop", "{body}");
    assert!(
        text.starts_with(cut) && !cut.contains(words[2]) && cut.len() < text.len(),
        "{cut:?} of {text:?}"
    );

    // Completions, whole and streamed.
    let req = json!({"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0});
    let (status, body) = server.post("/v1/completions", &req);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    let text = body["choices"][0]["text"].as_str().unwrap().to_string();
    assert!(!text.trim().is_empty(), "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 12);
    let mut req = req;
    req["stream"] = json!(true);
    let events = server.post_stream("/v1/completions", &req);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let streamed: String = events[..events.len() - 1]
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(streamed, text);
}

#[test]
fn the_openai_python_client_works_streamed_and_not() {
    let server = Server::start(&["-c", "512", "-t", "1"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/server/openai_client.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&server.base)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}): the test needs python3 with the openai package (.ci/run installs both)")
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the openai client failed (python3 with the openai package is needed; .ci/run installs it)\n\
         stdout:\n{stdout}\nstderr:\n{stderr}\nserver:\n{}",
        server.log()
    );
    for line in [
        "chat: ",
        "chat stream: ",
        "completion: ",
        "completion stream: same text",
        "unknown model: 404",
        "bad temperature: 400",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    assert_eq!(stdout.lines().last(), Some("OK"), "{stdout}");
}

#[test]
fn eight_concurrent_clients_on_two_slots_get_their_own_answers() {
    let server = Arc::new(Server::start(&["-c", "512", "-t", "2", "--parallel", "2"]));
    let questions = [
        "What is the capital of France?",
        "Name three colours.",
        "What is 2 + 2?",
        "Write a haiku about the sea.",
        "Who wrote Hamlet?",
        "What do bees make?",
        "Say hello in Spanish.",
        "Why is the sky blue?",
    ];
    let request = |q: &str| {
        let mut r = chat_request(q, 20);
        r["seed"] = json!(7);
        r
    };
    // Each request alone first.
    let alone: Vec<(String, Value)> = questions
        .iter()
        .map(|q| {
            let (status, body) = server.post("/v1/chat/completions", &request(q));
            assert_eq!(status, 200, "{body}");
            (check_chat(&body), body["usage"].clone())
        })
        .collect();
    // Then all at once, from 8 threads: 2 generate, 6 wait in the queue.
    let t0 = Instant::now();
    let handles: Vec<_> = questions
        .iter()
        .map(|q| {
            let server = server.clone();
            let body = request(q);
            std::thread::spawn(move || server.post("/v1/chat/completions", &body))
        })
        .collect();
    let mut saw_queue = false;
    while handles.iter().any(|h| !h.is_finished()) && t0.elapsed() < Duration::from_secs(60) {
        if let Ok((200, h)) = server.try_get("/health") {
            assert!(h["slots_processing"].as_u64().unwrap() <= 2, "{h}");
            saw_queue |= h["requests_queued"].as_u64().unwrap() > 0;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for (i, h) in handles.into_iter().enumerate() {
        let (status, body) = h.join().unwrap();
        assert_eq!(status, 200, "{body}");
        let text = check_chat(&body);
        assert_eq!(text, alone[i].0, "question {i} answered differently when concurrent");
        assert_eq!(body["usage"], alone[i].1, "question {i}");
    }
    assert!(
        saw_queue,
        "8 requests on 2 slots never queued; stderr:\n{}",
        server.log()
    );
}

#[test]
fn bad_input_gets_openai_shaped_4xx_errors() {
    let server = Server::start(&["-c", "128", "-t", "1"]);
    let chat = "/v1/chat/completions";

    let (s, b) = server.post_raw(chat, r#"{"messages": [{"role": "user", "content": "hi"}"#);
    let e = check_error(s, &b, 400, "malformed JSON");
    assert!(e["message"].as_str().unwrap().contains("parse the JSON"), "{b}");
    let (s, b) = server.post_raw(chat, "not json at all");
    check_error(s, &b, 400, "not JSON");
    let (s, b) = server.post_raw(chat, "[1, 2]");
    check_error(s, &b, 400, "not an object");

    let (s, b) = server.post_raw(
        chat,
        r#"{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}"#,
    );
    assert_eq!(check_error(s, &b, 400, "temperature a string")["param"], "temperature");
    let (s, b) = server.post_raw(chat, r#"{"messages": "hi"}"#);
    assert_eq!(check_error(s, &b, 400, "messages a string")["param"], "messages");
    let (s, b) = server.post_raw(chat, r#"{"model": "m"}"#);
    check_error(s, &b, 400, "no messages");
    let (s, b) = server.post_raw(
        chat,
        r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}"#,
    );
    assert_eq!(check_error(s, &b, 400, "negative max_tokens")["param"], "max_tokens");
    let (s, b) = server.post_raw(
        chat,
        r#"{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}"#,
    );
    check_error(s, &b, 400, "an image part");
    for (field, value) in [("temperature", json!(7)), ("top_p", json!(-0.5)), ("n", json!(3))] {
        let mut r = chat_request("hi", 4);
        r[field] = value;
        let (s, b) = server.post(chat, &r);
        assert_eq!(check_error(s, &b, 400, field)["param"], field);
    }

    let mut r = chat_request("hi", 4);
    r["model"] = json!("gpt-4o");
    let (s, b) = server.post(chat, &r);
    assert_eq!(check_error(s, &b, 404, "unknown model")["code"], "model_not_found");
    let (s, b) = server.post("/v1/completions", &json!({"model": "nope", "prompt": "hi"}));
    assert_eq!(
        check_error(s, &b, 404, "unknown model (completions)")["code"],
        "model_not_found"
    );

    // A prompt longer than the 128-token context.
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(40);
    let (s, b) = server.post(chat, &chat_request(&long, 4));
    let e = check_error(s, &b, 400, "prompt longer than the context");
    assert_eq!(e["code"], "context_length_exceeded");
    assert!(e["message"].as_str().unwrap().contains("128"), "{b}");
    let (s, b) = server.post("/v1/completions", &json!({"prompt": long, "max_tokens": 4}));
    assert_eq!(
        check_error(s, &b, 400, "long completion prompt")["code"],
        "context_length_exceeded"
    );

    // max_tokens beyond what the context holds, and beyond any integer.
    for max in ["100000", "1000000000000000", "18446744073709551615"] {
        let body = format!(r#"{{"messages": [{{"role": "user", "content": "hi"}}], "max_tokens": {max}}}"#);
        let (s, b) = server.post_raw(chat, &body);
        let e = check_error(s, &b, 400, "huge max_tokens");
        assert_eq!(e["code"], "context_length_exceeded", "{b}");
        assert!(e["message"].as_str().unwrap().contains(max), "{b}");
    }
    let (s, b) = server.post_raw(
        chat,
        r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e40}"#,
    );
    check_error(s, &b, 400, "max_tokens 1e40");

    let (s, b) = server.post_raw("/v1/nothing-here", "{}");
    check_error(s, &b, 404, "unknown route");
    let (s, b) = server.try_get("/v2/models").unwrap();
    check_error(s, &b, 404, "unknown route (GET)");
    let (s, b) = server.try_get("/v1/chat/completions").unwrap();
    check_error(s, &b, 405, "GET on a POST route");

    // And the server still answers.
    let (s, b) = server.post(chat, &chat_request("What is the capital of France?", 8));
    assert_eq!(s, 200, "{b}");
    check_chat(&b);
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

/// Sends a raw HTTP/1.1 POST and returns the open connection.
fn raw_post(server: &Server, path: &str, body: &Value) -> TcpStream {
    let addr = server.base.strip_prefix("http://").unwrap();
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.to_string();
    write!(
        conn,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    conn
}

/// Waits (at most `limit`) until no slot is generating; returns how long that took.
fn wait_idle(server: &Server, limit: Duration) -> Duration {
    let t0 = Instant::now();
    while server.busy_slots() > 0 {
        assert!(
            t0.elapsed() < limit,
            "the slot still generates {limit:?} after the client left:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    t0.elapsed()
}

#[test]
fn a_client_that_disconnects_frees_its_slot() {
    // One slot, one thread: a 1500-token answer takes many seconds (greedy SmolLM2 on this
    // prompt does not stop by itself: it continues the story).
    let server = Server::start(&["-c", "2048", "-t", "1", "--parallel", "1"]);
    let long = json!({"prompt": "Once upon a time", "max_tokens": 1500, "temperature": 0, "stream": true});

    // Streamed: read until the first text chunk, then close the connection.
    let mut conn = raw_post(&server, "/v1/completions", &long);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\"text\"") {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    assert_eq!(server.busy_slots(), 1, "the long generation should be running");
    drop(conn);
    wait_idle(&server, Duration::from_secs(3));
    let t0 = Instant::now();
    let (s, b) = server.post(
        "/v1/completions",
        &json!({"prompt": "Hello", "max_tokens": 8, "temperature": 0}),
    );
    assert_eq!(s, 200, "{b}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "the next request took {:?}",
        t0.elapsed()
    );

    // Not streamed: the handler is dropped with the connection, which stops the generation.
    let mut whole = long.clone();
    whole["stream"] = json!(false);
    let conn = raw_post(&server, "/v1/completions", &whole);
    let t0 = Instant::now();
    while server.busy_slots() == 0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "the generation did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    drop(conn);
    wait_idle(&server, Duration::from_secs(3));
    let (s, b) = server.post(
        "/v1/completions",
        &json!({"prompt": "Hello", "max_tokens": 8, "temperature": 0}),
    );
    assert_eq!(s, 200, "{b}");
    let log = server.log_once(|log| log.matches("the client went away").count() >= 2);
    assert_eq!(log.matches("the client went away").count(), 2, "{log}");
}

/// `--chat-template chatml` replaces SmolLM2's own template, which adds a default system message:
/// the same question then takes fewer prompt tokens.
#[test]
fn a_chat_template_chosen_by_name_replaces_the_models() {
    let prompt_tokens = |args: &[&str]| {
        let server = Server::start(args);
        let (status, body) = server.post("/v1/chat/completions", &chat_request("Hi", 4));
        assert_eq!(status, 200, "{body}");
        check_chat(&body);
        body["usage"]["prompt_tokens"].as_u64().unwrap()
    };
    let own = prompt_tokens(&[]);
    let chatml = prompt_tokens(&["--chat-template", "chatml"]);
    assert!(chatml + 10 < own, "own template {own} tokens, chatml {chatml}");
    let out = Command::new(env!("CARGO_BIN_EXE_tomoe-run"))
        .arg("serve")
        .arg("-m")
        .arg(common::model_path(common::RealModel::SmolLm2))
        .args(["--port", "0", "--chat-template", "/nonexistent.jinja"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a built-in template"), "{err}");
}

#[test]
fn an_f16_kv_cache_halves_the_slots_memory_and_answers() {
    // The start line reports the slots' KV caches: "KV cache f16/f16 (12.0 MiB in all)".
    let kv_mib = |args: &[&str]| {
        let server = Server::start(args);
        let (status, body) = server.post("/v1/chat/completions", &chat_request("Hi", 4));
        assert_eq!(status, 200, "{body}");
        assert!(!check_chat(&body).is_empty(), "{body}");
        let log = server.log();
        let at = log.find("KV cache ").unwrap_or_else(|| panic!("no KV cache line:\n{log}"));
        let rest = &log[at + "KV cache ".len()..];
        let (types, rest) = rest.split_once(" (").unwrap();
        let mib: f64 = rest.split_once(" MiB").unwrap().0.parse().unwrap();
        (types.to_string(), mib)
    };
    let (t32, m32) = kv_mib(&["-c", "256", "--parallel", "2"]);
    let (t16, m16) = kv_mib(&["-c", "256", "--parallel", "2", "--ctk", "f16", "--ctv", "f16"]);
    assert_eq!((t32.as_str(), t16.as_str()), ("f32/f32", "f16/f16"));
    assert!(m32 > 0.0 && (m16 * 2.0 - m32).abs() < 0.2, "f32 {m32} MiB, f16 {m16} MiB");
}
