//! Token attributes and special token ids as llama.cpp derives them from the metadata: types
//! from `token_type`, defaults per model family, and the end-of-generation set, including the
//! tokens it recognises by their text (models often mark `<|im_end|>` etc. only that way).

use super::spec::{SpecialIds, TokenizerSpec};
use crate::gguf::Strings;

/// Token attribute bits (the values of llama.cpp's `llama_token_attr`).
pub mod attr {
    pub const UNKNOWN: u32 = 1 << 0;
    pub const UNUSED: u32 = 1 << 1;
    pub const NORMAL: u32 = 1 << 2;
    pub const CONTROL: u32 = 1 << 3;
    pub const USER_DEFINED: u32 = 1 << 4;
    pub const BYTE: u32 = 1 << 5;
}

/// Tokens that end a turn, recognised by text when the metadata has no explicit id.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
/// Tokens that end generation wherever they appear.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];
/// gpt-oss markup that must always be rendered.
const ALWAYS_RENDERED: &[&str] = &["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"];

/// Model-family defaults that the metadata keys may override.
pub(crate) struct FamilyDefaults {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub add_bos: bool,
    pub add_space_prefix: bool,
}

/// Everything derived about the vocabulary's special tokens.
pub(crate) struct SpecialInfo {
    pub attrs: Vec<u32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub unk: Option<u32>,
    pub eog: Vec<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_space_prefix: bool,
}

fn attr_of_type(ty: i32) -> u32 {
    match ty {
        1 => attr::NORMAL,
        2 => attr::UNKNOWN,
        3 => attr::CONTROL,
        4 => attr::USER_DEFINED,
        5 => attr::UNUSED,
        6 => attr::BYTE,
        _ => 0,
    }
}

/// Applies defaults, metadata ids, text-based detection and the EOG rules.
pub(crate) fn derive(
    spec: &TokenizerSpec,
    texts: &Strings,
    defaults: FamilyDefaults,
) -> SpecialInfo {
    let n = texts.len();
    let mut attrs: Vec<u32> = match &spec.token_types {
        Some(types) => types.iter().take(n).map(|&t| attr_of_type(t)).collect(),
        None => vec![attr::NORMAL; n],
    };
    let in_range = |id: Option<u32>| id.filter(|&i| (i as usize) < n);
    // A metadata id out of range keeps the default (as llama.cpp, which warns).
    let pick = |default: Option<u32>, key: Option<u32>| in_range(key).or(in_range(default));
    let SpecialIds {
        bos,
        eos,
        eot,
        eom,
        unk,
        fim_pre,
        fim_suf,
        fim_mid,
        fim_pad,
        fim_rep,
        fim_sep,
        ..
    } = spec.special.clone();
    let bos = pick(defaults.bos, bos);
    let eos = pick(defaults.eos, eos);
    let unk = pick(defaults.unk, unk);
    let mut eot = in_range(eot);
    let mut eom = in_range(eom);
    let (mut fim_pre, mut fim_suf, mut fim_mid) =
        (in_range(fim_pre), in_range(fim_suf), in_range(fim_mid));
    let (mut fim_pad, mut fim_rep, mut fim_sep) =
        (in_range(fim_pad), in_range(fim_rep), in_range(fim_sep));

    // Detection by text; the first (lowest) id wins when a vocabulary has several candidates,
    // and the detected token is made a control token.
    for (slot, list) in [
        (&mut eot, EOT_TEXTS),
        (&mut eom, EOM_TEXTS),
        (&mut fim_pre, FIM_PRE_TEXTS),
        (&mut fim_suf, FIM_SUF_TEXTS),
        (&mut fim_mid, FIM_MID_TEXTS),
        (&mut fim_pad, FIM_PAD_TEXTS),
        (&mut fim_rep, FIM_REP_TEXTS),
        (&mut fim_sep, FIM_SEP_TEXTS),
    ] {
        if slot.is_none() {
            if let Some(id) = texts.iter().position(|t| list.contains(&t)) {
                *slot = Some(id as u32);
                attrs[id] |= attr::CONTROL;
            }
        }
    }
    let _ = (fim_pre, fim_suf, fim_mid);
    for (id, t) in texts.iter().enumerate() {
        if attrs[id] & attr::CONTROL != 0 && t.contains("unused") {
            attrs[id] |= attr::UNUSED;
        }
    }

    let mut eog: Vec<u32> = [fim_pad, fim_rep, fim_sep].into_iter().flatten().collect();
    for (id, t) in texts.iter().enumerate() {
        if EOG_TEXTS.contains(&t) {
            eog.push(id as u32);
            attrs[id] |= attr::CONTROL;
        }
    }
    for (id, t) in texts.iter().enumerate() {
        if ALWAYS_RENDERED.contains(&t) {
            attrs[id] = attr::USER_DEFINED;
        }
    }
    eog.extend([eos, eot, eom].into_iter().flatten());
    eog.sort_unstable();
    eog.dedup();

    // Harmony-style vocabularies: "<|end|>" ends a message, not the generation.
    let has = |eog: &[u32], text: &str| eog.iter().any(|&id| texts.get(id as usize) == Some(text));
    let call = has(&eog, "<|call|>") || has(&eog, "<|calls|>");
    if has(&eog, "<|end|>") && call && (has(&eog, "<|return|>") || has(&eog, "<|flush|>")) {
        if let Some(pos) = eog.iter().position(|&id| texts.get(id as usize) == Some("<|end|>")) {
            attrs[eog[pos] as usize] = attr::USER_DEFINED;
            eog.remove(pos);
        }
    }
    // Where "</s>" is an ordinary token next to a model-specific end marker.
    if (has(&eog, "<|tool_response>") || has(&eog, "<|plamo:eos|>")) && has(&eog, "</s>") {
        if let Some(pos) = eog.iter().position(|&id| texts.get(id as usize) == Some("</s>")) {
            attrs[eog[pos] as usize] = attr::NORMAL;
            eog.remove(pos);
        }
    }

    SpecialInfo {
        attrs,
        bos,
        eos,
        eot,
        unk,
        eog,
        add_bos: spec.add_bos.unwrap_or(defaults.add_bos),
        add_eos: spec.add_eos.unwrap_or(false),
        add_space_prefix: spec.add_space_prefix.unwrap_or(defaults.add_space_prefix),
    }
}
