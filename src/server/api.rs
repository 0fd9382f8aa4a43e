//! The requests the server reads, and their checks: typed by serde from the JSON body, every
//! problem a 400 in OpenAI's shape naming the field at fault.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use super::error::ApiError;
use crate::chat::SamplerParams;

/// The sampling fields both endpoints take. `None`: the server's default.
#[derive(Debug, Default)]
pub struct Sampling {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub max_tokens: Option<u64>,
    pub stop: Vec<String>,
    pub seed: Option<u64>,
}

/// `stop`: one string or a list of them.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Debug)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// A chat message's `content`: a string or a list of parts (only text parts are read).
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize, Debug)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Deserialize, Debug)]
pub struct Message {
    pub role: String,
    /// Absent or null for an assistant turn that only called tools.
    #[serde(default)]
    pub content: Option<Content>,
}

/// The fields of `/v1/chat/completions` the server reads (others are ignored).
#[derive(Deserialize, Debug)]
pub struct ChatRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<Message>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub min_p: Option<f32>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub seed: Option<serde_json::Number>,
    #[serde(default)]
    pub n: Option<u64>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
}

/// `prompt` of `/v1/completions`: a string, a list of one string, or token ids.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
}

/// The fields of `/v1/completions` the server reads (others are ignored).
#[derive(Deserialize, Debug)]
pub struct CompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub prompt: Prompt,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub min_p: Option<f32>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub seed: Option<serde_json::Number>,
    #[serde(default)]
    pub n: Option<u64>,
    #[serde(default)]
    pub logprobs: Option<u64>,
    #[serde(default)]
    pub echo: Option<bool>,
    #[serde(default)]
    pub suffix: Option<String>,
}

/// Parses a request body: malformed JSON, a body that is not an object and fields of the
/// wrong type are 400s naming the field.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("We could not parse the JSON body of your request: {e}"), None))?;
    if !value.is_object() {
        return Err(ApiError::invalid("The request body must be a JSON object.", None));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let param = (path != ".").then_some(path);
        let message = match &param {
            Some(p) => format!("Invalid value for '{p}': {}", e.inner()),
            None => format!("Invalid request: {}", e.inner()),
        };
        ApiError::invalid(message, param.as_deref())
    })
}

fn seed(n: Option<&serde_json::Number>) -> Result<Option<u64>, ApiError> {
    match n {
        None => Ok(None),
        Some(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Ok(Some(u)),
            (None, Some(i)) => Ok(Some(i as u64)),
            _ => Err(ApiError::invalid(
                format!("Invalid value for 'seed': expected an integer, got {n}"),
                Some("seed"),
            )),
        },
    }
}

fn stops(stop: Option<Stop>) -> Vec<String> {
    match stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    }
}

fn check_n(n: Option<u64>) -> Result<(), ApiError> {
    match n {
        None | Some(1) => Ok(()),
        Some(n) => Err(ApiError::invalid(
            format!("n = {n}: only one choice per request is supported"),
            Some("n"),
        )),
    }
}

impl ChatRequest {
    /// Checks what the typed parse could not, and takes out the sampling fields.
    pub fn sampling(&mut self) -> Result<Sampling, ApiError> {
        check_n(self.n)?;
        if self.logprobs == Some(true) {
            return Err(ApiError::invalid("logprobs are not supported", Some("logprobs")));
        }
        if self.tools.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(ApiError::invalid("tools are not supported", Some("tools")));
        }
        let (max_tokens, max_param) = match (self.max_completion_tokens, self.max_tokens) {
            (Some(m), _) => (Some(m), "max_completion_tokens"),
            (None, m) => (m, "max_tokens"),
        };
        let s = Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            max_tokens,
            stop: stops(self.stop.take()),
            seed: seed(self.seed.as_ref())?,
        };
        s.check(max_param)?;
        Ok(s)
    }

    /// The conversation as (role, text); text parts of a list are joined, other parts are a 400.
    pub fn conversation(&self) -> Result<Vec<(String, String)>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid(
                "'messages' must hold at least one message",
                Some("messages"),
            ));
        }
        let mut out = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.iter().enumerate() {
            let text = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for (j, p) in parts.iter().enumerate() {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => text.push_str(t),
                            ("text", None) => {
                                return Err(ApiError::invalid(
                                    "a text part needs 'text'",
                                    Some(&format!("messages[{i}].content[{j}].text")),
                                ))
                            }
                            (kind, _) => {
                                return Err(ApiError::invalid(
                                    format!("content parts of type '{kind}' are not supported (only 'text')"),
                                    Some(&format!("messages[{i}].content[{j}].type")),
                                ))
                            }
                        }
                    }
                    text
                }
            };
            out.push((m.role.clone(), text));
        }
        Ok(out)
    }
}

impl CompletionRequest {
    pub fn sampling(&mut self) -> Result<Sampling, ApiError> {
        check_n(self.n)?;
        if self.logprobs.is_some_and(|n| n > 0) {
            return Err(ApiError::invalid("logprobs are not supported", Some("logprobs")));
        }
        if self.echo == Some(true) {
            return Err(ApiError::invalid("echo is not supported", Some("echo")));
        }
        if self.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid("suffix is not supported", Some("suffix")));
        }
        let s = Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            max_tokens: self.max_tokens,
            stop: stops(self.stop.take()),
            seed: seed(self.seed.as_ref())?,
        };
        s.check("max_tokens")?;
        Ok(s)
    }
}

fn range(name: &str, v: Option<f32>, lo: f32, hi: f32) -> Result<(), ApiError> {
    match v {
        Some(x) if !(x.is_finite() && (lo..=hi).contains(&x)) => Err(ApiError::invalid(
            format!("'{name}' must be between {lo} and {hi}, got {x}"),
            Some(name),
        )),
        _ => Ok(()),
    }
}

impl Sampling {
    fn check(&self, max_param: &str) -> Result<(), ApiError> {
        range("temperature", self.temperature, 0.0, 2.0)?;
        range("top_p", self.top_p, 0.0, 1.0)?;
        range("min_p", self.min_p, 0.0, 1.0)?;
        if self.max_tokens == Some(0) {
            return Err(ApiError::invalid(
                format!("'{max_param}' must be at least 1"),
                Some(max_param),
            ));
        }
        Ok(())
    }

    /// The sampler's settings: the request's values over the server's defaults.
    pub fn params(&self, defaults: &SamplerParams, seed: u64) -> SamplerParams {
        SamplerParams {
            temperature: self.temperature.unwrap_or(defaults.temperature),
            top_p: self.top_p.unwrap_or(defaults.top_p),
            top_k: self.top_k.unwrap_or(defaults.top_k),
            min_p: self.min_p.unwrap_or(defaults.min_p),
            seed: self.seed.unwrap_or(seed),
            ..defaults.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_types_name_the_field() {
        let e =
            parse::<ChatRequest>(br#"{"messages":[{"role":"user","content":"hi"}],"temperature":"hot"}"#).unwrap_err();
        assert_eq!(e.status.as_u16(), 400);
        assert_eq!(e.param.as_deref(), Some("temperature"));
        let e = parse::<ChatRequest>(br#"{"messages":"hi"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = parse::<ChatRequest>(br#"{"messages":[{"role":"user","content":"hi"}"#).unwrap_err();
        assert!(e.message.contains("could not parse the JSON"), "{}", e.message);
        assert!(parse::<ChatRequest>(b"[1]").is_err());
    }

    #[test]
    fn text_parts_are_joined_and_others_refused() {
        let mut r = parse::<ChatRequest>(
            br#"{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],
                "stop":"x","seed":-1,"max_completion_tokens":5}"#,
        )
        .unwrap();
        assert_eq!(r.conversation().unwrap(), [("user".to_string(), "ab".to_string())]);
        let s = r.sampling().unwrap();
        assert_eq!(s.stop, ["x"]);
        assert_eq!(s.seed, Some(u64::MAX));
        assert_eq!(s.max_tokens, Some(5));
        let r =
            parse::<ChatRequest>(br#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]}"#)
                .unwrap();
        assert_eq!(
            r.conversation().unwrap_err().param.as_deref(),
            Some("messages[0].content[0].type")
        );
    }

    #[test]
    fn out_of_range_sampling_is_refused() {
        for body in [
            r#"{"prompt":"a","temperature":3}"#,
            r#"{"prompt":"a","top_p":1.5}"#,
            r#"{"prompt":"a","max_tokens":0}"#,
            r#"{"prompt":"a","n":2}"#,
            r#"{"prompt":"a","seed":1.5}"#,
        ] {
            let mut r = parse::<CompletionRequest>(body.as_bytes()).unwrap();
            assert_eq!(r.sampling().unwrap_err().status.as_u16(), 400, "{body}");
        }
        assert!(parse::<CompletionRequest>(br#"{"prompt":"a","max_tokens":-1}"#).is_err());
    }
}
