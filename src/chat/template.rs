//! Chat templates: the model's `tokenizer.chat_template` (Jinja, as Hugging Face writes them)
//! rendered with minijinja, configured like transformers' environment (trim_blocks,
//! lstrip_blocks, Python string/dict/list methods, `raise_exception`, `strftime_now`).

use minijinja::{context, Environment, Error, ErrorKind, Value};

use crate::gguf::GgufFile;

const TEMPLATE_KEY: &str = "tokenizer.chat_template";
const TEMPLATE_NAME: &str = "chat";

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Why a template could not be loaded or rendered.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("metadata key `{key}` has the wrong type: expected {expected}")]
    WrongType {
        key: &'static str,
        expected: &'static str,
    },
    #[error("the chat template does not parse: {0}")]
    Syntax(String),
    #[error("rendering the chat template failed: {0}")]
    Render(String),
}

/// A compiled chat template plus the special-token texts templates refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

/// Message of a template error, with its location and cause.
fn describe(e: &Error) -> String {
    let mut s = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// Built-in templates by name (the names llama.cpp's `--chat-template` uses), for models whose
/// own template is missing or broken.
const BUILTIN: [(&str, &str); 4] = [
    (
        "chatml",
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}\
         {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    ),
    (
        "llama3",
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n\
         {{ m['content'] | trim }}<|eot_id|>{% endfor %}\
         {% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}",
    ),
    (
        // Gemma has no system role: the system text opens the first user turn.
        "gemma",
        "{{ bos_token }}{% set ns = namespace(sys='') %}{% for m in messages %}\
         {% if m['role'] == 'system' %}{% set ns.sys = m['content'] | trim + '\n\n' %}\
         {% else %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n\
         {% if m['role'] == 'user' %}{{ ns.sys }}{% set ns.sys = '' %}{% endif %}\
         {{ m['content'] | trim }}<end_of_turn>\n{% endif %}{% endfor %}\
         {% if add_generation_prompt %}<start_of_turn>model\n{% endif %}",
    ),
    (
        "llama2",
        "{% set ns = namespace(sys='') %}{% for m in messages %}\
         {% if m['role'] == 'system' %}{% set ns.sys = '<<SYS>>\n' + m['content'] | trim + '\n<</SYS>>\n\n' %}\
         {% elif m['role'] == 'user' %}{{ bos_token }}[INST] {{ ns.sys }}{{ m['content'] | trim }} [/INST]{% set ns.sys = '' %}\
         {% else %} {{ m['content'] | trim }} {{ eos_token }}{% endif %}{% endfor %}",
    ),
];

impl ChatTemplate {
    /// The names of the built-in templates.
    pub fn builtin_names() -> impl Iterator<Item = &'static str> {
        BUILTIN.iter().map(|(name, _)| *name)
    }

    /// The source of a built-in template, by name.
    pub fn builtin(name: &str) -> Option<&'static str> {
        BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, source)| *source)
    }

    /// The file's chat template, or `Ok(None)` if it has none (then the caller falls back to
    /// plain completion).
    pub fn from_gguf(f: &GgufFile) -> Result<Option<ChatTemplate>, ChatError> {
        let Some(v) = f.get(TEMPLATE_KEY) else {
            return Ok(None);
        };
        let source = v.as_str().ok_or(ChatError::WrongType {
            key: TEMPLATE_KEY,
            expected: "string",
        })?;
        ChatTemplate::with_file_tokens(f, source).map(Some)
    }

    /// Compiles `source` with the BOS and EOS texts of the file's vocabulary.
    pub fn with_file_tokens(f: &GgufFile, source: &str) -> Result<ChatTemplate, ChatError> {
        let token_text = |key: &str| -> String {
            let id = f.get(key).and_then(|v| v.as_u64());
            let tokens = f.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()?.as_strings());
            match (id, tokens) {
                (Some(id), Some(tokens)) => tokens.get(id as usize).unwrap_or_default().to_string(),
                _ => String::new(),
            }
        };
        let bos = token_text("tokenizer.ggml.bos_token_id");
        let eos = token_text("tokenizer.ggml.eos_token_id");
        ChatTemplate::new(source, bos, eos)
    }

    /// Compiles a template; `bos_token` / `eos_token` are the texts the template may insert.
    pub fn new(
        source: &str,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<ChatTemplate, ChatError> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| ChatError::Syntax(describe(&e)))?,
        );
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| -> Result<Value, Error> {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            strftime(&fmt, secs).map(Value::from)
        });
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| ChatError::Syntax(describe(&e)))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    /// Renders the conversation; `add_generation_prompt` opens the assistant's turn.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ChatError::Render(describe(&e)))?;
        let msgs: Vec<Value> = messages
            .iter()
            .map(|m| context! { role => m.role.as_str(), content => m.content.as_str() })
            .collect();
        tmpl.render(context! {
            messages => msgs,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        })
        .map_err(|e| ChatError::Render(describe(&e)))
    }
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Civil date (year, month 1-12, day 1-31) of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The subset of C `strftime` that chat templates use (UTC): %Y %y %m %d %e %B %b %A %a %H %M
/// %S %j %%; any other directive is an error.
pub(crate) fn strftime(fmt: &str, unix_secs: i64) -> Result<String, Error> {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let yday = days - days_from_civil(y, 1, 1) + 1;
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:2}")),
            Some('B') => out.push_str(MONTHS[m as usize - 1]),
            Some('b') => out.push_str(&MONTHS[m as usize - 1][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('H') => out.push_str(&format!("{:02}", secs / 3600)),
            Some('M') => out.push_str(&format!("{:02}", secs / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", secs % 60)),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "strftime_now: unsupported directive %{}",
                        other.map(String::from).unwrap_or_default()
                    ),
                ))
            }
        }
    }
    Ok(out)
}

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_known_dates() {
        // 2024-02-29 13:05:09 UTC, a Thursday, day 60 of the year.
        let t = 1_709_211_909;
        assert_eq!(strftime("%d %b %Y", t).unwrap(), "29 Feb 2024");
        assert_eq!(
            strftime("%A %B %e, %y %H:%M:%S %j %%", t).unwrap(),
            "Thursday February 29, 24 13:05:09 060 %"
        );
        assert_eq!(strftime("%Y-%m-%d %a", 0).unwrap(), "1970-01-01 Thu");
        assert!(strftime("%Q", 0).is_err());
    }

    #[test]
    fn python_methods_and_raise_exception() {
        let t = ChatTemplate::new(
            "{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}{{ raise_exception('bad role ' + m['role']) }}{% endif %}\
             [{{ m['role'].upper() }}]{{ m['content'].strip() }}{% if not loop.last %}|{% endif %}{% endfor %}\
             {% if add_generation_prompt %}{{ bos_token }}{% endif %}",
            "<s>",
            "</s>",
        )
        .unwrap();
        let msgs = [
            ChatMessage::new("user", "  hi  "),
            ChatMessage::new("assistant", "yo\n"),
        ];
        assert_eq!(t.render(&msgs, true).unwrap(), "[USER]hi|[ASSISTANT]yo<s>");
        let err = t
            .render(&[ChatMessage::new("tool", "x")], false)
            .unwrap_err();
        assert!(
            matches!(&err, ChatError::Render(m) if m.contains("bad role tool")),
            "{err}"
        );
    }

    #[test]
    fn blocks_are_trimmed_like_transformers() {
        let t = ChatTemplate::new(
            "{% for m in messages %}\n    {{ m.content }}\n{% endfor %}\n",
            "",
            "",
        )
        .unwrap();
        assert_eq!(
            t.render(
                &[ChatMessage::new("user", "a"), ChatMessage::new("user", "b")],
                false
            )
            .unwrap(),
            "    a\n    b\n"
        );
    }

    #[test]
    fn builtin_templates_render() {
        let msgs = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi"),
            ChatMessage::new("assistant", "Hello."),
            ChatMessage::new("user", "Bye"),
        ];
        let render = |name: &str| {
            ChatTemplate::new(ChatTemplate::builtin(name).unwrap(), "<s>", "</s>")
                .unwrap()
                .render(&msgs, true)
                .unwrap()
        };
        assert_eq!(
            render("chatml"),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            render("llama3"),
            "<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        assert_eq!(
            render("gemma"),
            "<s><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n\
             <start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
        );
        assert_eq!(
            render("llama2"),
            "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello. </s><s>[INST] Bye [/INST]"
        );
        assert_eq!(ChatTemplate::builtin_names().count(), 4);
        assert!(ChatTemplate::builtin("nope").is_none());
    }

    #[test]
    fn syntax_errors_are_reported() {
        assert!(matches!(
            ChatTemplate::new("{% for %}", "", ""),
            Err(ChatError::Syntax(_))
        ));
    }
}
