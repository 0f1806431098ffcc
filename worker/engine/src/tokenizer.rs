//! CLIP tokenizer: prompt text to the padded `input_ids` that SD-1.5's text encoder takes.
//!
//! This module owns everything between a prompt string and token ids: reading a tokenizer folder
//! (`vocab.json`, `merges.txt`, `tokenizer_config.json`, `special_tokens_map.json`), text
//! clean-up, CLIP's pre-tokenisation regex, the GPT-2/CLIP byte-to-unicode table, byte-level BPE
//! with the `</w>` end-of-word marker, BOS/EOS, truncation and padding to `model_max_length`,
//! exactly as `tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length,
//! truncation=True).input_ids` does in diffusers' pipelines. Truncation is reported
//! ([`Encoding::truncated`]) rather than silent.
//!
//! Two reference behaviours exist and differ only on unusual text; [`TokenizerFlavor`] picks one:
//!
//! - [`TokenizerFlavor::Transformers5`] (the default): transformers >= 5 `CLIPTokenizer` (backed
//!   by the `tokenizers` library, the same pipeline as `CLIPTokenizerFast` in 4.x). Added/special
//!   tokens are split out of the raw text, then NFC, runs of whitespace to one space, per-character
//!   lower-casing, the CLIP regex, then the byte-level regex (which splits a literal
//!   `<|endoftext|>` written in another case into `<|`, `endoftext`, `|>`). This is the version
//!   installed in this repository and the one that generated the pipeline parity fixtures.
//! - [`TokenizerFlavor::SlowTransformers4`]: the slow Python `CLIPTokenizer` of transformers 4.x
//!   *without* `ftfy` installed (what diffusers users got by default). Instead of the normaliser it
//!   runs BERT's `BasicTokenizer(strip_accents=False, do_split_on_punc=False)`: drops NUL, U+FFFD
//!   and every `\p{C}` character except `\t\n\r`, puts spaces around CJK ideographs (so each is its
//!   own word), NFC, splits on whitespace, lower-cases each word (with final-sigma handling), and
//!   only reads the first 48 894 merges. With `ftfy` installed the slow tokenizer would also repair
//!   mojibake and unescape HTML entities; that path is not implemented (ftfy is not a dependency of
//!   diffusers or transformers, and transformers 5 dropped it).
//!
//! Added tokens (bos/eos/unk/pad and `added_tokens_decoder`) are cut out of the raw text before
//! clean-up in both flavours (the pad token `!` of SD-2 folders too: `wow!!` gives `wow</w> ! !`).
//! transformers 5 matches a special token in the *normalised* text instead (so `<|ENDOFTEXT|>`
//! becomes `<|endoftext|>`) when its bos/unk/pad roles are all `"normalized": true` in
//! `special_tokens_map.json` (plain strings count as false); the eos role's flag does not count.
//! That rule was measured on transformers 5.24, not read from its code; with a `tokenizer.json`
//! in the folder its `added_tokens` flags are used instead.
//!
//! Neither flavour unescapes HTML entities (`&amp;` stays four characters and a `;`).
//! Unicode tables come from the `regex` and `unicode-normalization` crates, whose Unicode version
//! may be newer than Python's `unicodedata`; only characters assigned in between could differ.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use regex::Regex;
use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

/// CLIP's pre-tokenisation pattern (transformers' `CLIPTokenizer`).
const CLIP_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
/// The `tokenizers` `ByteLevel` pre-tokeniser's GPT-2 pattern, without its `\s+(?!\S)` branch:
/// it only ever sees CLIP pieces, which contain no whitespace.
const BYTE_LEVEL_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";
/// The slow tokenizer keeps only `merges[1 : 49152 - 256 - 2 + 1]` of `merges.txt`.
pub const SLOW_MAX_MERGES: usize = 49152 - 256 - 2;
/// End-of-word marker appended to the last symbol of every word.
const END_OF_WORD: &str = "</w>";
/// Entries kept in the BPE cache before it is cleared.
const CACHE_LIMIT: usize = 65_536;

const DEFAULT_BOS: &str = "<|startoftext|>";
const DEFAULT_EOS: &str = "<|endoftext|>";

/// Which reference implementation the tokenizer reproduces; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenizerFlavor {
    /// transformers >= 5 `CLIPTokenizer` / `CLIPTokenizerFast` (the `tokenizers` pipeline).
    #[default]
    Transformers5,
    /// transformers 4.x slow `CLIPTokenizer` without `ftfy` (`BasicTokenizer` clean-up).
    SlowTransformers4,
}

/// Errors while loading a tokenizer folder; each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A file that is missing or unreadable.
    #[error("cannot read tokenizer file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON file that does not parse (or has the wrong shape).
    #[error("malformed JSON in tokenizer file {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A file that parses but whose content cannot be used.
    #[error("invalid tokenizer file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The result of [`ClipTokenizer::encode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoding {
    /// `[BOS] tokens [EOS] [PAD]...`, exactly `model_max_length` ids.
    pub ids: Vec<i64>,
    /// Whether prompt tokens were dropped to fit `model_max_length` (EOS is always kept last).
    pub truncated: bool,
    /// Length of the un-truncated encoding, BOS and EOS included.
    pub token_count_before_truncation: usize,
}

/// A CLIP byte-level BPE tokenizer loaded from a diffusers `tokenizer/` folder. `Send + Sync`.
pub struct ClipTokenizer {
    flavor: TokenizerFlavor,
    vocab: HashMap<String, i64>,
    /// `"first second"` to merge rank (symbols never contain a space).
    ranks: HashMap<String, usize>,
    /// Added tokens, longest first. Those not `normalized` are cut out of the raw text before
    /// anything else; `normalized` ones (transformers 5 only) out of the normalised text.
    no_split: Vec<AddedToken>,
    bos_id: i64,
    eos_id: i64,
    pad_id: i64,
    unk_id: i64,
    model_max_length: usize,
    byte_chars: [char; 256],
    clip_re: Regex,
    byte_level_re: Regex,
    whitespace_re: Regex,
    other_re: Regex,
    space_separator_re: Regex,
    cache: Mutex<HashMap<String, Vec<i64>>>,
}

impl fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("flavor", &self.flavor)
            .field("vocab_size", &self.vocab.len())
            .field("merges", &self.ranks.len())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("pad_id", &self.pad_id)
            .field("unk_id", &self.unk_id)
            .field("model_max_length", &self.model_max_length)
            .finish_non_exhaustive()
    }
}

/// GPT-2/CLIP's reversible byte to printable-character table: printable Latin-1 bytes map to
/// themselves, the other 68 bytes to U+0100.. in byte order.
pub fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let printable = |b: u32| {
        (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    let mut next = 256u32;
    for (b, slot) in (0u32..).zip(table.iter_mut()) {
        let code = if printable(b) {
            b
        } else {
            next += 1;
            next - 1
        };
        // Every code is below 0x200, never a surrogate.
        *slot = char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
    }
    table
}

/// The CJK ideograph blocks that BERT's `BasicTokenizer` surrounds with spaces.
fn is_cjk_ideograph(c: char) -> bool {
    matches!(u32::from(c),
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B820..=0x2CEAF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}

fn read_text(path: &Path) -> Result<String, TokenizerError> {
    std::fs::read_to_string(path).map_err(|source| TokenizerError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, TokenizerError> {
    serde_json::from_str(text).map_err(|source| TokenizerError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// A special-token entry: a plain string or an `AddedToken` object with `content`.
fn token_content(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Object(map) => map
            .get("content")
            .and_then(Value::as_str)
            .map(str::to_owned),
        _ => None,
    }
}

fn compile(pattern: &str) -> Result<Regex, TokenizerError> {
    Regex::new(pattern).map_err(|e| TokenizerError::Invalid {
        path: PathBuf::from("<built-in pattern>"),
        message: format!("regex {pattern:?} does not compile: {e}"),
    })
}

/// A token cut out of the text whole (special tokens and `added_tokens_decoder` entries).
#[derive(Debug, Clone)]
struct AddedToken {
    content: String,
    id: i64,
    /// Matched in the normalised (NFC, collapsed, lower-cased) text instead of the raw text.
    normalized: bool,
}

/// Splits `text` on the leftmost-longest occurrences of `tokens` (sorted longest first): the
/// text in between as `Ok`, each token as `Err(id)`.
fn split_on_tokens<'a, 't>(
    text: &'a str,
    tokens: impl Iterator<Item = &'t AddedToken> + Clone,
) -> Vec<Result<&'a str, i64>> {
    let mut out = Vec::new();
    let mut segment_start = 0;
    let mut pos = 0;
    while pos < text.len() {
        let rest = &text[pos..];
        if let Some(token) = tokens
            .clone()
            .find(|t| rest.starts_with(t.content.as_str()))
        {
            out.push(Ok(&text[segment_start..pos]));
            out.push(Err(token.id));
            pos += token.content.len();
            segment_start = pos;
        } else {
            pos += rest.chars().next().map_or(1, char::len_utf8);
        }
    }
    out.push(Ok(&text[segment_start..]));
    out
}

/// The contents of a tokenizer folder, before parsing. Every file is optional here; which ones
/// a working tokenizer needs is decided in [`ClipTokenizer::from_files`].
struct FolderFiles<'a> {
    dir: &'a Path,
    vocab: Option<&'a str>,
    merges: Option<&'a str>,
    config: Option<&'a str>,
    special_tokens_map: Option<&'a str>,
    /// `tokenizer.json` (the `tokenizers` library's file): the BPE model, added tokens and their
    /// flags. transformers 5 writes only this and `tokenizer_config.json`.
    tokenizer_json: Option<&'a str>,
}

/// Reads `dir/name` when it exists.
fn read_optional(dir: &Path, name: &str) -> Result<Option<String>, TokenizerError> {
    let path = dir.join(name);
    if path.is_file() {
        read_text(&path).map(Some)
    } else {
        Ok(None)
    }
}

/// The BPE model of a `tokenizer.json`: vocabulary and merges, checked to be CLIP's kind (BPE
/// with the `</w>` end-of-word suffix, CLIP's normaliser and pre-tokeniser), since the
/// tokenisation steps around the BPE are CLIP's and not read from the file.
fn bpe_from_tokenizer_json(
    path: &Path,
    json: &Value,
) -> Result<(HashMap<String, i64>, Vec<String>), TokenizerError> {
    let invalid = |message: String| TokenizerError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let model = json
        .get("model")
        .ok_or_else(|| invalid("no \"model\"".into()))?;
    if model.get("type").and_then(Value::as_str) != Some("BPE") {
        return Err(invalid(format!(
            "model type {} is not BPE (a CLIP tokenizer is byte-level BPE)",
            model.get("type").unwrap_or(&Value::Null)
        )));
    }
    let suffix = model.get("end_of_word_suffix").and_then(Value::as_str);
    if suffix != Some(END_OF_WORD) {
        return Err(invalid(format!(
            "model end_of_word_suffix {suffix:?} is not CLIP's {END_OF_WORD:?}"
        )));
    }
    if let Some(prefix) = model
        .get("continuing_subword_prefix")
        .and_then(Value::as_str)
        && !prefix.is_empty()
    {
        return Err(invalid(format!(
            "model continuing_subword_prefix {prefix:?} is not supported (CLIP has none)"
        )));
    }
    let vocab: HashMap<String, i64> = model
        .get("vocab")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| invalid(format!("model vocab: {e}")))?
        .ok_or_else(|| invalid("model has no vocab".into()))?;
    let mut merges = Vec::new();
    for entry in model
        .get("merges")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("model has no merges list".into()))?
    {
        // `"a b"` (tokenizers < 0.20) or `["a", "b"]` (newer).
        let line = match entry {
            Value::String(s) => s.clone(),
            Value::Array(pair) => match (pair.first(), pair.get(1), pair.len()) {
                (Some(Value::String(a)), Some(Value::String(b)), 2) => format!("{a} {b}"),
                _ => return Err(invalid(format!("merge {entry} is not a pair of strings"))),
            },
            _ => return Err(invalid(format!("merge {entry} is not a pair of strings"))),
        };
        merges.push(line);
    }
    check_clip_pipeline(json).map_err(invalid)?;
    Ok((vocab, merges))
}

/// The normaliser and pre-tokeniser of a `tokenizer.json` must be CLIP's (NFC, `\s+` to a space,
/// lower-case; the CLIP split pattern then byte-level), the steps this module implements.
fn check_clip_pipeline(json: &Value) -> Result<(), String> {
    let types = |list: Option<&Value>| -> Vec<String> {
        list.and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .map(|i| {
                        i.get("type")
                            .and_then(Value::as_str)
                            .unwrap_or("?")
                            .to_owned()
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let normalizer = json.get("normalizer").unwrap_or(&Value::Null);
    let steps = types(normalizer.get("normalizers"));
    if steps != ["NFC", "Replace", "Lowercase"] {
        return Err(format!(
            "normalizer {normalizer} is not CLIP's (NFC, Replace \\s+ by a space, Lowercase)"
        ));
    }
    let pre = json.get("pre_tokenizer").unwrap_or(&Value::Null);
    let pre_steps = types(pre.get("pretokenizers"));
    let pattern = pre
        .get("pretokenizers")
        .and_then(|p| p.get(0))
        .and_then(|split| split.get("pattern"))
        .and_then(|p| p.get("Regex"))
        .and_then(Value::as_str);
    // tokenizers < 0.20 wrote the pattern without the two special-token alternatives; the
    // byte-level split that follows cuts such a piece into `<|`, the word and `|>` either way.
    let legacy = CLIP_PATTERN.strip_prefix(r"<\|startoftext\|>|<\|endoftext\|>|");
    if pre_steps != ["Split", "ByteLevel"] || (pattern != Some(CLIP_PATTERN) && pattern != legacy) {
        return Err(format!(
            "pre_tokenizer {pre} is not CLIP's (Split on the CLIP pattern, then ByteLevel)"
        ));
    }
    Ok(())
}

impl ClipTokenizer {
    /// Loads a CLIP tokenizer folder in any layout transformers writes, reproducing
    /// [`TokenizerFlavor::default`] (transformers >= 5); see [`ClipTokenizer::from_folder_with`].
    pub fn from_folder(dir: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        Self::from_folder_with(dir, TokenizerFlavor::default(), None)
    }

    /// Like [`ClipTokenizer::from_folder`], reproducing the given reference behaviour.
    pub fn from_folder_with_flavor(
        dir: impl AsRef<Path>,
        flavor: TokenizerFlavor,
    ) -> Result<Self, TokenizerError> {
        Self::from_folder_with(dir, flavor, None)
    }

    /// Loads a tokenizer folder in any of transformers' layouts:
    ///
    /// - the BPE model from `tokenizer.json` (transformers 5, `CLIPTokenizerFast`) or from
    ///   `vocab.json` + `merges.txt` (the slow tokenizer's files). With both, the
    ///   [`TokenizerFlavor::Transformers5`] flavour reads `tokenizer.json` (as `tokenizers` does)
    ///   and the slow flavour the two text files;
    /// - special tokens and `model_max_length` from `tokenizer_config.json` (plain strings, or
    ///   `AddedToken` objects, with or without `added_tokens_decoder`), then
    ///   `special_tokens_map.json`, then `tokenizer.json`'s `added_tokens`, then CLIP's defaults;
    ///   every one of these files may be missing.
    ///
    /// A folder without a `model_max_length` (a `tokenizer.json` alone) pads to
    /// `fallback_max_length` (the pipeline passes the text encoder's positions), and is refused
    /// without one.
    pub fn from_folder_with(
        dir: impl AsRef<Path>,
        flavor: TokenizerFlavor,
        fallback_max_length: Option<usize>,
    ) -> Result<Self, TokenizerError> {
        let dir = dir.as_ref();
        let vocab = read_optional(dir, "vocab.json")?;
        let merges = read_optional(dir, "merges.txt")?;
        let config = read_optional(dir, "tokenizer_config.json")?;
        let special_tokens_map = read_optional(dir, "special_tokens_map.json")?;
        let tokenizer_json = read_optional(dir, "tokenizer.json")?;
        if tokenizer_json.is_none() && (vocab.is_none() || merges.is_none()) {
            let missing = if vocab.is_none() {
                "vocab.json"
            } else {
                "merges.txt"
            };
            return Err(TokenizerError::Read {
                path: dir.join(missing),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "a CLIP tokenizer folder needs tokenizer.json, or vocab.json and merges.txt",
                ),
            });
        }
        Self::from_files(
            &FolderFiles {
                dir,
                vocab: vocab.as_deref(),
                merges: merges.as_deref(),
                config: config.as_deref(),
                special_tokens_map: special_tokens_map.as_deref(),
                tokenizer_json: tokenizer_json.as_deref(),
            },
            flavor,
            fallback_max_length,
        )
    }

    fn from_files(
        files: &FolderFiles<'_>,
        flavor: TokenizerFlavor,
        fallback_max_length: Option<usize>,
    ) -> Result<Self, TokenizerError> {
        let config_path = files.dir.join("tokenizer_config.json");
        let map_path = files.dir.join("special_tokens_map.json");
        let json_path = files.dir.join("tokenizer.json");

        let config: serde_json::Map<String, Value> = match files.config {
            Some(text) => parse_json(&config_path, text)?,
            None => serde_json::Map::new(),
        };
        let special_map: serde_json::Map<String, Value> = match files.special_tokens_map {
            Some(text) => parse_json(&map_path, text)?,
            None => serde_json::Map::new(),
        };
        let tokenizer_json: Option<Value> = files
            .tokenizer_json
            .map(|text| parse_json(&json_path, text))
            .transpose()?;

        let use_text_files = match (files.vocab, files.merges, &tokenizer_json) {
            (Some(_), Some(_), None) => true,
            (Some(_), Some(_), Some(_)) => flavor == TokenizerFlavor::SlowTransformers4,
            (_, _, Some(_)) => false,
            _ => {
                return Err(TokenizerError::Invalid {
                    path: files.dir.to_path_buf(),
                    message: "needs tokenizer.json, or vocab.json and merges.txt".into(),
                });
            }
        };
        let (vocab_path, vocab, ranks) = match (use_text_files, &tokenizer_json) {
            (false, Some(json)) => {
                let (vocab, merges) = bpe_from_tokenizer_json(&json_path, json)?;
                let ranks = parse_merges(&merges.join("\n"), TokenizerFlavor::Transformers5);
                (json_path.clone(), vocab, ranks)
            }
            _ => {
                let vocab_path = files.dir.join("vocab.json");
                let vocab: HashMap<String, i64> =
                    parse_json(&vocab_path, files.vocab.unwrap_or_default())?;
                let ranks = parse_merges(files.merges.unwrap_or_default(), flavor);
                (vocab_path, vocab, ranks)
            }
        };

        // transformers writes 1e30 (VERY_LARGE_INTEGER) for "no limit"; that counts as missing.
        let configured = config
            .get("model_max_length")
            .and_then(Value::as_u64)
            .filter(|&n| n < 1 << 32)
            .and_then(|n| usize::try_from(n).ok());
        let model_max_length = match configured.or(fallback_max_length) {
            Some(n) if n >= 2 => n,
            _ => {
                return Err(TokenizerError::Invalid {
                    path: config_path,
                    message: format!(
                        "model_max_length must be an integer >= 2, found {}",
                        config
                            .get("model_max_length")
                            .map_or_else(|| "nothing".to_owned(), Value::to_string)
                    ),
                });
            }
        };

        // Tokens registered in `added_tokens_decoder` keep their ids.
        let mut added: Vec<AddedToken> = Vec::new();
        if let Some(Value::Object(decoder)) = config.get("added_tokens_decoder") {
            for (id, entry) in decoder {
                let (Ok(id), Some(content)) = (id.parse::<i64>(), token_content(entry)) else {
                    return Err(TokenizerError::Invalid {
                        path: config_path,
                        message: format!(
                            "added_tokens_decoder entry {id:?} needs an integer key and a content"
                        ),
                    });
                };
                let normalized = entry
                    .get("normalized")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                added.push(AddedToken {
                    content,
                    id,
                    normalized,
                });
            }
        }

        // The content comes from tokenizer_config.json, else special_tokens_map.json, else CLIP's
        // defaults. The `normalized` flag is read from special_tokens_map.json first (a plain
        // string means false).
        let mut roles: Vec<(&str, String, bool)> = Vec::new();
        for (key, default) in [
            ("bos_token", DEFAULT_BOS),
            ("eos_token", DEFAULT_EOS),
            ("unk_token", DEFAULT_EOS),
            ("pad_token", DEFAULT_EOS),
        ] {
            let content = [config.get(key), special_map.get(key)]
                .into_iter()
                .flatten()
                .find_map(token_content)
                .unwrap_or_else(|| default.to_owned());
            let normalized = [special_map.get(key), config.get(key)]
                .into_iter()
                .flatten()
                .find(|v| token_content(v).is_some())
                .and_then(|v| v.get("normalized"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            roles.push((key, content, normalized));
        }
        let role_id =
            |added: &[AddedToken], key: &str, content: &str| -> Result<i64, TokenizerError> {
                added
                    .iter()
                    .find(|t| t.content == content)
                    .map(|t| t.id)
                    .or_else(|| vocab.get(content).copied())
                    .ok_or_else(|| TokenizerError::Invalid {
                        path: vocab_path.clone(),
                        message: format!("{key} {content:?} is not in the vocabulary"),
                    })
            };
        let bos_id = role_id(&added, "bos_token", &roles[0].1)?;
        let eos_id = role_id(&added, "eos_token", &roles[1].1)?;
        let unk_id = role_id(&added, "unk_token", &roles[2].1)?;
        let pad_id = role_id(&added, "pad_token", &roles[3].1)?;
        for (key, content, _) in &roles {
            if added.iter().any(|t| t.content == *content) {
                continue;
            }
            // Measured on transformers 5.24 (tests/parity/tokenizer/generate.py and the probes
            // described in the module docs): a special token is matched after normalisation only
            // when its bos/unk/pad roles are all marked `normalized`; the eos role does not count.
            let others: Vec<bool> = roles
                .iter()
                .filter(|(k, c, _)| c == content && *k != "eos_token")
                .map(|(_, _, n)| *n)
                .collect();
            let normalized = !others.is_empty() && others.iter().all(|n| *n);
            let id = role_id(&added, key, content)?;
            added.push(AddedToken {
                content: content.clone(),
                id,
                normalized,
            });
        }

        // With a tokenizer.json, transformers 5 takes the added tokens and their flags from it.
        if let Some(list) = tokenizer_json
            .as_ref()
            .and_then(|json| json.get("added_tokens"))
            .and_then(Value::as_array)
        {
            for entry in list {
                let (Some(content), Some(id)) = (
                    token_content(entry),
                    entry.get("id").and_then(Value::as_i64),
                ) else {
                    continue;
                };
                let normalized = entry
                    .get("normalized")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                match added.iter_mut().find(|t| t.content == content) {
                    Some(token) => token.normalized = normalized,
                    None => added.push(AddedToken {
                        content,
                        id,
                        normalized,
                    }),
                }
            }
        }
        if flavor == TokenizerFlavor::SlowTransformers4 {
            // The slow tokenizer's trie matches every added token in the raw text.
            for token in &mut added {
                token.normalized = false;
            }
        }

        added.retain(|t| !t.content.is_empty());
        added.sort_by(|a, b| {
            b.content
                .len()
                .cmp(&a.content.len())
                .then_with(|| a.content.cmp(&b.content))
        });

        let clip_re = match flavor {
            TokenizerFlavor::Transformers5 => compile(CLIP_PATTERN)?,
            // The slow tokenizer compiles the pattern with re.IGNORECASE.
            TokenizerFlavor::SlowTransformers4 => compile(&format!("(?i){CLIP_PATTERN}"))?,
        };

        Ok(Self {
            flavor,
            vocab,
            ranks,
            no_split: added,
            bos_id,
            eos_id,
            pad_id,
            unk_id,
            model_max_length,
            byte_chars: bytes_to_unicode(),
            clip_re,
            byte_level_re: compile(BYTE_LEVEL_PATTERN)?,
            whitespace_re: compile(r"\s+")?,
            other_re: compile(r"\p{C}")?,
            space_separator_re: compile(r"\p{Zs}")?,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The reference behaviour this tokenizer reproduces.
    pub fn flavor(&self) -> TokenizerFlavor {
        self.flavor
    }

    /// Length of every [`Encoding::ids`] (`model_max_length` of `tokenizer_config.json`).
    pub fn model_max_length(&self) -> usize {
        self.model_max_length
    }

    /// Id of the beginning-of-text token.
    pub fn bos_id(&self) -> i64 {
        self.bos_id
    }

    /// Id of the end-of-text token.
    pub fn eos_id(&self) -> i64 {
        self.eos_id
    }

    /// Id used for padding (read from the config: `<|endoftext|>` for SD-1.5, `!` for SD-2).
    pub fn pad_id(&self) -> i64 {
        self.pad_id
    }

    /// Encodes a prompt to exactly `model_max_length` ids: BOS, the prompt's tokens (cut to
    /// `model_max_length - 2` when longer), EOS, then padding.
    pub fn encode(&self, text: &str) -> Encoding {
        let tokens = self.tokenize(text);
        let room = self.model_max_length.saturating_sub(2);
        let kept = tokens.len().min(room);
        let mut ids = Vec::with_capacity(self.model_max_length.max(kept + 2));
        ids.push(self.bos_id);
        ids.extend_from_slice(&tokens[..kept]);
        ids.push(self.eos_id);
        ids.resize(self.model_max_length.max(ids.len()), self.pad_id);
        Encoding {
            ids,
            truncated: tokens.len() > room,
            token_count_before_truncation: tokens.len() + 2,
        }
    }

    /// The prompt's token ids without BOS, EOS, truncation or padding.
    pub fn tokenize(&self, text: &str) -> Vec<i64> {
        let segments = split_on_tokens(text, self.no_split.iter().filter(|t| !t.normalized));
        let mut ids = Vec::new();
        for segment in segments {
            match segment {
                Ok(segment) => self.tokenize_segment(segment, &mut ids),
                Err(id) => ids.push(id),
            }
        }
        ids
    }

    /// Text between raw-matched added tokens: clean-up, pre-tokenisation and BPE.
    fn tokenize_segment(&self, segment: &str, ids: &mut Vec<i64>) {
        if segment.is_empty() {
            return;
        }
        match self.flavor {
            TokenizerFlavor::Transformers5 => {
                let nfc: String = segment.nfc().collect();
                let collapsed = self.whitespace_re.replace_all(&nfc, " ");
                let lower: String = collapsed.chars().flat_map(char::to_lowercase).collect();
                let pieces = split_on_tokens(&lower, self.no_split.iter().filter(|t| t.normalized));
                for piece in pieces {
                    match piece {
                        Ok(text) => {
                            for clip_piece in self.clip_re.find_iter(text) {
                                for word in self.byte_level_re.find_iter(clip_piece.as_str()) {
                                    self.bpe_into(word.as_str(), ids);
                                }
                            }
                        }
                        Err(id) => ids.push(id),
                    }
                }
            }
            TokenizerFlavor::SlowTransformers4 => {
                let cleaned = self.basic_clean(segment);
                for piece in self.clip_re.find_iter(&cleaned) {
                    let piece = piece.as_str();
                    // The slow tokenizer's BPE cache is seeded with the two literals.
                    if piece == DEFAULT_BOS || piece == DEFAULT_EOS {
                        ids.push(self.vocab.get(piece).copied().unwrap_or(self.unk_id));
                    } else {
                        self.bpe_into(piece, ids);
                    }
                }
            }
        }
    }

    /// `" ".join(BasicTokenizer(strip_accents=False, do_split_on_punc=False).tokenize(text))`.
    fn basic_clean(&self, text: &str) -> String {
        let mut buf = [0u8; 4];
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            let s: &str = c.encode_utf8(&mut buf);
            if matches!(c, ' ' | '\t' | '\n' | '\r') || self.space_separator_re.is_match(s) {
                out.push(' ');
            } else if c == '\0' || c == '\u{FFFD}' || self.other_re.is_match(s) {
                continue;
            } else if is_cjk_ideograph(c) {
                out.push(' ');
                out.push(c);
                out.push(' ');
            } else {
                out.push(c);
            }
        }
        let nfc: String = out.nfc().collect();
        nfc.split_whitespace()
            .map(str::to_lowercase)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Byte-encodes one pre-tokenised word, runs BPE on it and appends the ids.
    fn bpe_into(&self, word: &str, ids: &mut Vec<i64>) {
        let encoded: String = word
            .bytes()
            .map(|b| self.byte_chars[usize::from(b)])
            .collect();
        if let Ok(cache) = self.cache.lock()
            && let Some(hit) = cache.get(&encoded)
        {
            ids.extend_from_slice(hit);
            return;
        }
        let word_ids: Vec<i64> = self
            .bpe(&encoded)
            .iter()
            .map(|symbol| self.vocab.get(symbol).copied().unwrap_or(self.unk_id))
            .collect();
        ids.extend_from_slice(&word_ids);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(encoded, word_ids);
        }
    }

    /// BPE on a byte-encoded word: the last symbol carries `</w>`; the lowest-ranked adjacent
    /// pair is merged everywhere (left to right) until no ranked pair is left.
    fn bpe(&self, word: &str) -> Vec<String> {
        let mut symbols: Vec<String> = word.chars().map(String::from).collect();
        match symbols.last_mut() {
            Some(last) => last.push_str(END_OF_WORD),
            None => return symbols,
        }
        let mut key = String::new();
        while symbols.len() > 1 {
            let mut best: Option<(usize, usize)> = None; // (rank, index of first occurrence)
            for (i, pair) in symbols.windows(2).enumerate() {
                key.clear();
                key.push_str(&pair[0]);
                key.push(' ');
                key.push_str(&pair[1]);
                if let Some(&rank) = self.ranks.get(&key)
                    && best.is_none_or(|(r, _)| rank < r)
                {
                    best = Some((rank, i));
                }
            }
            let Some((_, at)) = best else { break };
            let first = symbols[at].clone();
            let second = symbols[at + 1].clone();
            let mut merged = Vec::with_capacity(symbols.len());
            let mut i = 0;
            while i < symbols.len() {
                if i + 1 < symbols.len() && symbols[i] == first && symbols[i + 1] == second {
                    merged.push(format!("{first}{second}"));
                    i += 2;
                } else {
                    merged.push(std::mem::take(&mut symbols[i]));
                    i += 1;
                }
            }
            symbols = merged;
        }
        symbols
    }
}

/// Merge ranks from `merges.txt` as each reference reads it.
fn parse_merges(text: &str, flavor: TokenizerFlavor) -> HashMap<String, usize> {
    let lines: Vec<&str> = match flavor {
        // `read().strip().split("\n")[1 : 49152 - 256 - 2 + 1]`: the first line is always dropped.
        TokenizerFlavor::SlowTransformers4 => text
            .trim()
            .split('\n')
            .skip(1)
            .take(SLOW_MAX_MERGES)
            .collect(),
        // Blank lines and `#` comment lines (the `#version` header) are skipped.
        TokenizerFlavor::Transformers5 => text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .collect(),
    };
    let mut ranks = HashMap::with_capacity(lines.len());
    for (rank, line) in lines.iter().enumerate() {
        let mut parts = line.split_whitespace();
        if let (Some(a), Some(b), None) = (parts.next(), parts.next(), parts.next()) {
            ranks.insert(format!("{a} {b}"), rank);
        }
    }
    ranks
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::print_stdout)]

    use super::*;

    const CONFIG_77: &str = r#"{"model_max_length": 77, "bos_token": "<|startoftext|>", "eos_token": {"content": "<|endoftext|>"}}"#;

    /// Vocabulary of the byte symbols a..z (with and without `</w>`), a few merges and the two
    /// special tokens.
    fn tiny(config: &str, map: &str, flavor: TokenizerFlavor) -> ClipTokenizer {
        let mut vocab: Vec<String> = Vec::new();
        for c in 'a'..='z' {
            vocab.push(c.to_string());
        }
        for c in 'a'..='z' {
            vocab.push(format!("{c}</w>"));
        }
        vocab.extend(
            [
                "!",
                "!</w>",
                "Ġ",
                "lo",
                "low",
                "low</w>",
                "er</w>",
                "lower</w>",
                "<|startoftext|>",
                "<|endoftext|>",
            ]
            .map(String::from),
        );
        let vocab_json = serde_json::to_string(
            &vocab
                .iter()
                .enumerate()
                .map(|(i, t)| (t.clone(), i as i64))
                .collect::<HashMap<_, _>>(),
        )
        .unwrap();
        let merges = "#version: 0.2\nl o\nlo w\ne r</w>\nlow er</w>\nlo w</w>\n";
        ClipTokenizer::from_files(
            &FolderFiles {
                dir: Path::new("tiny"),
                vocab: Some(&vocab_json),
                merges: Some(merges),
                config: Some(config),
                special_tokens_map: Some(map),
                tokenizer_json: None,
            },
            flavor,
            None,
        )
        .unwrap()
    }

    fn tokens(tok: &ClipTokenizer, ids: &[i64]) -> Vec<String> {
        let inverse: HashMap<i64, &String> = tok.vocab.iter().map(|(k, v)| (*v, k)).collect();
        ids.iter().map(|id| inverse[id].clone()).collect()
    }

    #[test]
    fn tokenizer_bytes_to_unicode_is_a_printable_bijection() {
        let table = bytes_to_unicode();
        let distinct: std::collections::HashSet<char> = table.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
        for b in 0x21u8..=0x7E {
            assert_eq!(table[usize::from(b)], char::from(b));
        }
        assert_eq!(table[usize::from(b' ')], 'Ġ');
        assert_eq!(table[0], 'Ā');
        assert_eq!(table[0xAD], 'Ń');
        assert!(table.iter().all(|c| !c.is_whitespace() && !c.is_control()));
    }

    #[test]
    fn tokenizer_bpe_merges_by_rank_with_end_of_word() {
        for flavor in [
            TokenizerFlavor::Transformers5,
            TokenizerFlavor::SlowTransformers4,
        ] {
            let tok = tiny(CONFIG_77, "{}", flavor);
            assert_eq!(tok.bpe("lower"), ["lower</w>"]);
            assert_eq!(tok.bpe("low"), ["low</w>"]);
            assert_eq!(tok.bpe("lowlow"), ["low", "low</w>"]);
            assert_eq!(tok.bpe("x"), ["x</w>"]);
            let ids = tok.tokenize("LOWER low, lo!");
            // "," is not in the vocabulary: unknown symbols become the unk token.
            assert_eq!(
                tokens(&tok, &ids),
                [
                    "lower</w>",
                    "low</w>",
                    "<|endoftext|>",
                    "l",
                    "o</w>",
                    "!</w>"
                ]
            );
        }
    }

    #[test]
    fn tokenizer_pads_truncates_and_reports_it() {
        let config = r#"{"model_max_length": 5, "pad_token": "!"}"#;
        let tok = tiny(config, "{}", TokenizerFlavor::Transformers5);
        let (bos, eos, pad) = (tok.bos_id(), tok.eos_id(), tok.pad_id());
        assert_eq!(tokens(&tok, &[pad]), ["!"]);
        let low = tok.vocab["low</w>"];

        let empty = tok.encode("");
        assert_eq!(empty.ids, [bos, eos, pad, pad, pad]);
        assert!(!empty.truncated);
        assert_eq!(empty.token_count_before_truncation, 2);

        let exact = tok.encode("low low low");
        assert_eq!(exact.ids, [bos, low, low, low, eos]);
        assert!(!exact.truncated);
        assert_eq!(exact.token_count_before_truncation, 5);

        let over = tok.encode("low low low low low");
        assert_eq!(over.ids, [bos, low, low, low, eos]);
        assert!(over.truncated);
        assert_eq!(over.token_count_before_truncation, 7);

        // The pad token "!" is an added token: cut out of the text, no `</w>`.
        assert_eq!(tokens(&tok, &tok.tokenize("low!!")), ["low</w>", "!", "!"]);
    }

    #[test]
    fn tokenizer_reads_special_tokens_from_either_file() {
        let map = r#"{"bos_token": {"content": "<|endoftext|>"}, "pad_token": "!"}"#;
        // tokenizer_config.json wins for bos_token; pad_token comes from special_tokens_map.json.
        let tok = tiny(CONFIG_77, map, TokenizerFlavor::Transformers5);
        assert_eq!(
            tokens(&tok, &[tok.bos_id(), tok.eos_id(), tok.pad_id()]),
            ["<|startoftext|>", "<|endoftext|>", "!"]
        );
        assert_eq!(tok.model_max_length(), 77);
    }

    #[test]
    fn tokenizer_slow_flavor_splits_cjk_and_drops_controls() {
        let tok = tiny(CONFIG_77, "{}", TokenizerFlavor::SlowTransformers4);
        assert_eq!(
            tok.basic_clean("  Ab\u{200b}c\u{7}\tD\u{3000}日本語 ΟΔΟΣ "),
            "abc d 日 本 語 οδος"
        );
        assert_eq!(tok.basic_clean("\u{378}x\u{E000}"), "x");
        let lower: String = "ΟΔΟΣ".chars().flat_map(char::to_lowercase).collect();
        assert_eq!(lower, "οδοσ");
    }

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "inpaint-tokenizer-test-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn tokenizer_errors_name_the_file() {
        let missing = ClipTokenizer::from_folder("/nonexistent/tokenizer").unwrap_err();
        assert!(matches!(missing, TokenizerError::Read { .. }));
        assert!(missing.to_string().contains("vocab.json"), "{missing}");

        let dir = scratch_dir("errors");
        std::fs::write(
            dir.join("vocab.json"),
            r#"{"a</w>": 0, "<|startoftext|>": 1, "<|endoftext|>": 2}"#,
        )
        .unwrap();
        std::fs::write(dir.join("merges.txt"), "#version: 0.2\n").unwrap();
        std::fs::write(dir.join("special_tokens_map.json"), "{}").unwrap();
        let no_config = ClipTokenizer::from_folder(&dir).unwrap_err();
        assert!(
            no_config.to_string().contains("tokenizer_config.json"),
            "{no_config}"
        );

        std::fs::write(dir.join("tokenizer_config.json"), "{not json").unwrap();
        let bad = ClipTokenizer::from_folder(&dir).unwrap_err();
        assert!(matches!(bad, TokenizerError::Json { .. }));
        assert!(bad.to_string().contains("tokenizer_config.json"), "{bad}");

        std::fs::write(dir.join("tokenizer_config.json"), "{}").unwrap();
        let no_len = ClipTokenizer::from_folder(&dir).unwrap_err();
        assert!(no_len.to_string().contains("model_max_length"), "{no_len}");

        std::fs::write(
            dir.join("tokenizer_config.json"),
            r#"{"model_max_length": 8, "pad_token": "?"}"#,
        )
        .unwrap();
        let no_pad = ClipTokenizer::from_folder(&dir).unwrap_err();
        assert!(
            no_pad.to_string().contains("pad_token") && no_pad.to_string().contains("vocab.json"),
            "{no_pad}"
        );

        std::fs::write(
            dir.join("tokenizer_config.json"),
            r#"{"model_max_length": 8}"#,
        )
        .unwrap();
        let ok = ClipTokenizer::from_folder(&dir).unwrap();
        assert_eq!(ok.encode("a").ids, [1, 0, 2, 2, 2, 2, 2, 2]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tokenizer_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<ClipTokenizer>();
    }

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/parity")
    }

    /// Compares every case of a fixture file; returns the number of cases.
    fn compare_cases(tok: &ClipTokenizer, label: &str, cases: &[Value]) -> usize {
        for case in cases {
            let prompt = case["prompt"].as_str().unwrap();
            let expected: Vec<i64> = serde_json::from_value(case["input_ids"].clone()).unwrap();
            let got = tok.encode(prompt);
            assert_eq!(got.ids, expected, "{label}: ids of {prompt:?}");
            assert_eq!(
                got.truncated,
                case["truncated"].as_bool().unwrap(),
                "{label}: truncated flag of {prompt:?}"
            );
            assert_eq!(
                got.token_count_before_truncation as u64,
                case["untruncated_length"].as_u64().unwrap(),
                "{label}: untruncated length of {prompt:?}"
            );
        }
        cases.len()
    }

    #[test]
    fn tokenizer_parity_with_transformers() {
        let dir = fixtures().join("tokenizer/fixtures");
        let mut total = 0;
        for (file, flavor) in [
            ("cases_transformers5.json", TokenizerFlavor::Transformers5),
            (
                "cases_transformers4.json",
                TokenizerFlavor::SlowTransformers4,
            ),
        ] {
            let fixture: Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap();
            for (folder, data) in fixture["folders"].as_object().unwrap() {
                let tok = ClipTokenizer::from_folder_with_flavor(dir.join(folder), flavor).unwrap();
                assert_eq!(
                    tok.model_max_length() as u64,
                    data["model_max_length"].as_u64().unwrap()
                );
                let n = compare_cases(
                    &tok,
                    &format!("{file}/{folder}"),
                    data["cases"].as_array().unwrap(),
                );
                println!("{file} {folder}: {n} cases match");
                total += n;
            }
        }
        println!("tokenizer parity: {total} cases compared, all equal");
        assert!(total > 0);
    }

    #[test]
    fn tokenizer_parity_with_pipeline_fixtures() {
        let root = fixtures().join("fixtures");
        let fixture: Value = serde_json::from_str(
            &std::fs::read_to_string(root.join("tokenizer_cases.json")).unwrap(),
        )
        .unwrap();
        let mut total = 0;
        for (model, data) in fixture["models"].as_object().unwrap() {
            let tok = ClipTokenizer::from_folder(root.join("models").join(model).join("tokenizer"))
                .unwrap();
            assert_eq!(
                tok.model_max_length() as u64,
                data["model_max_length"].as_u64().unwrap()
            );
            assert_eq!(tok.pad_id(), data["pad_token_id"].as_i64().unwrap());
            total += compare_cases(&tok, model, data["cases"].as_array().unwrap());
        }
        println!("tokenizer_cases.json: {total} cases compared, all equal");
        assert!(total > 0);
    }
}
