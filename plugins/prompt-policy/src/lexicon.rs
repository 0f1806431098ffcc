//! The policy's vocabulary and the **fixed** form of a prompt: words repaired against it, so
//! that spelling tricks meet the listed terms.
//!
//! The vocabulary is every word of every listed term (after normalisation). From a prompt's
//! base form (its leetspeak form when it has one, else the plain form) the fixed form is built
//! word by word:
//!
//! 1. **Spaced-letter runs are split into the words they spell.** The plain form joins
//!    `n-a-k-e-d l-i-t-t-l-e g-i-r-l` into one run `nakedlittlegirl`; the fixed form cuts it into
//!    `naked little girl` (dynamic programming over the vocabulary, fewest letters left over), so
//!    phrases match too.
//! 2. **Split words are joined.** Two or three adjacent words whose concatenation is a
//!    vocabulary word of at least [`MIN_JOINED`] letters are joined (`na ked` → `naked`,
//!    `de cap itated` → `decapitated`), unless every part is itself a known word (`pen is`).
//! 3. **Run-together words are split.** An unknown word of at least [`MIN_COMPOUND`] letters that
//!    is entirely made of vocabulary words of three or more letters is split (`nakedchild`,
//!    `NAKEDCHILD` → `naked child`).
//! 4. **Misspellings are corrected.** An unknown word is replaced by the vocabulary word it is
//!    close to. Closeness is edit distance (insertion, deletion, substitution, transposition of
//!    neighbours) between **phonetic keys** (doubled letters collapsed, `ph`→`f`, `ck`/`c`/`q`→`k`,
//!    `z`→`s`, `y`→`i`), bounded by the length of the listed word:
//!
//!    | listed word | allowed |
//!    |---|---|
//!    | 1–3 letters | nothing (exact only) |
//!    | 4 letters | same key only (`sexxy`, `kidz`, `chyld`) |
//!    | 5 letters | distance 1 without substitution (`nakd`, `naekd`, `nakeed`; not `baked`) |
//!    | 6–9 letters | distance 1 |
//!    | 10+ letters | distance 2 |
//!
//! "Unknown" means: not a vocabulary word and not a **known word** (`[lexicon] known_words` in
//! the policy files). The built-in known words (`ops/policy/known_words.toml`) are the English
//! dictionary words that these rules would otherwise change into a listed word (`baked`,
//! `therapist`, `pen is`), derived by `plugins/prompt-policy/tools/known_words.py`; words of
//! other languages are not protected that way, which the evaluation corpus measures.
//!
//! Words with CJK characters are left alone (those scripts match by substring anyway).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use crate::normalize::{Form, FormKind, is_cjk};

/// Shortest vocabulary word a join may produce.
pub const MIN_JOINED: usize = 5;
/// Shortest unknown word that is tried as run-together vocabulary words.
pub const MIN_COMPOUND: usize = 7;
/// Shortest vocabulary piece of a run-together word or a spaced-letter run.
const MIN_PIECE: usize = 3;
/// Shortest unknown word that is split even when function words and unknown letters are left
/// over (`ABoyChainedToAWall`, `FotoEróticaDeUnaNiña`: CamelCase prompts whose short words
/// keep the plain form from splitting them).
pub const MIN_LOOSE_COMPOUND: usize = 12;

/// Short function words of the Latin-script built-in languages: free pieces when a long
/// run-together word is split (they are not vocabulary and would otherwise be leftovers).
const FUNCTION_WORDS: &[&str] = &[
    "a", "an", "the", "of", "on", "in", "at", "to", "with", "and", "or", "for", "by", "from",
    "his", "her", "my", "is", "as", "into", "de", "la", "el", "los", "las", "en", "con", "y", "un",
    "una", "del", "al", "mi", "su", "da", "do", "em", "na", "no", "com", "e", "um", "uma", "meu",
    "minha", "le", "les", "du", "des", "une", "et", "au", "ma", "mon", "sur", "der", "die", "das",
    "ein", "eine", "im", "am", "mit", "und", "auf", "von", "zu", "mein", "meine", "di", "il", "lo",
    "della", "mia", "mio",
];

/// A small multiply-rotate hasher (the one rustc uses): the lexicon hashes short words many
/// times per prompt, where SipHash's cost would dominate, and its keys are not attacker-chosen
/// in a way that matters (a collision costs a few extra comparisons, nothing else).
#[derive(Debug, Default, Clone, Copy)]
struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(buf));
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    fn write_u64(&mut self, word: u64) {
        self.add(word);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type FastSet = HashSet<String, BuildHasherDefault<FxHasher>>;

/// Longest phonetic key the fuzzy matcher looks at; longer words are left alone.
const MAX_KEY: usize = 32;

/// Polynomial hashes of a key's prefixes, so that the hash of the key with one or two
/// characters deleted costs O(1): the deletion neighbourhood is indexed by hash, not by string,
/// so probing allocates nothing, and a collision only adds a candidate that the distance check
/// then rejects.
struct KeyHash {
    /// `prefix[i]`: hash of `key[..i]`.
    prefix: [u64; MAX_KEY + 1],
    /// `power[i]`: BASE^i.
    power: [u64; MAX_KEY + 1],
    len: usize,
}

const BASE: u64 = 0x100_0000_01b3;

impl KeyHash {
    fn new(key: &[char]) -> Self {
        let mut prefix = [0u64; MAX_KEY + 1];
        let mut power = [1u64; MAX_KEY + 1];
        let len = key.len().min(MAX_KEY);
        for i in 0..len {
            prefix[i + 1] = prefix[i]
                .wrapping_mul(BASE)
                .wrapping_add(u64::from(key[i]) + 1);
            power[i + 1] = power[i].wrapping_mul(BASE);
        }
        Self { prefix, power, len }
    }

    /// Hash of `key[a..b]`, as if it were a key of its own.
    fn range(&self, a: usize, b: usize) -> u64 {
        self.prefix[b].wrapping_sub(self.prefix[a].wrapping_mul(self.power[b - a]))
    }

    /// Hash of the key without the characters at `skip` (`usize::MAX`: none).
    fn without(&self, skip: (usize, usize)) -> u64 {
        let n = self.len;
        let h = match skip {
            (usize::MAX, _) => self.prefix[n],
            (i, usize::MAX) => self
                .range(0, i)
                .wrapping_mul(self.power[n - i - 1])
                .wrapping_add(self.range(i + 1, n)),
            (i, j) => {
                let head = self.range(0, i).wrapping_mul(self.power[n - i - 2]);
                let mid = self.range(i + 1, j).wrapping_mul(self.power[n - j - 1]);
                head.wrapping_add(mid).wrapping_add(self.range(j + 1, n))
            }
        };
        // Keys of different lengths must not meet.
        h ^ ((n - usize::from(skip.0 != usize::MAX) - usize::from(skip.1 != usize::MAX)) as u64)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

/// Every (skip, skip) pair for deletions up to `depth` (usize::MAX: keep the character).
fn deletion_skips(len: usize, depth: usize) -> impl Iterator<Item = (usize, usize)> {
    let none = std::iter::once((usize::MAX, usize::MAX));
    let one = (0..len)
        .filter(move |_| depth >= 1)
        .map(|i| (i, usize::MAX));
    let two = (0..len)
        .filter(move |_| depth >= 2)
        .flat_map(move |i| (i + 1..len).map(move |j| (i, j)));
    none.chain(one).chain(two)
}

/// How [`Lexicon::segment`] may split a word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Split {
    /// A spaced-letter run: function words and up to half the letters left over.
    Spaced,
    /// A run-together word: vocabulary pieces only.
    Strict,
    /// A long run-together word: function words and a quarter of the letters left over.
    Loose,
}

/// What a piece of a split word is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    Vocab,
    Function,
    Rest,
}

/// The vocabulary of a compiled policy and the indexes the fixed form needs.
#[derive(Debug, Clone, Default)]
pub struct Lexicon {
    /// Every vocabulary word.
    vocab: FastSet,
    /// Stems of `stem*` terms: a join may produce a word that starts with one.
    stems: FastSet,
    /// Vocabulary words that are fuzzy targets, with their allowed distance rule.
    targets: Vec<Target>,
    /// Hash of a phonetic key (and of its deletions) → target ids.
    index: HashMap<u64, Vec<u32>, BuildHasherDefault<FxHasher>>,
    /// Words never corrected, joined or split.
    known: FastSet,
    /// The first [`MIN_PIECE`] characters of every vocabulary word: a join or a split can only
    /// start with one of these, which rules most words out with one lookup.
    starts: FastSet,
    /// Longest vocabulary word, in bytes.
    max_len: usize,
}

#[derive(Debug, Clone)]
struct Target {
    word: String,
    key: Vec<char>,
    chars: usize,
}

/// The edit distance allowed to a target of `chars` characters, and whether substitutions count.
fn allowance(chars: usize) -> (usize, bool) {
    match chars {
        0..=3 => (0, false),
        4 => (0, false),
        5 => (1, false),
        6..=9 => (1, true),
        _ => (2, true),
    }
}

/// The phonetic key of a word: a few spelling-insensitive folds, then doubled letters collapsed.
fn key(word: &str) -> Vec<char> {
    let chars: Vec<char> = word.chars().collect();
    let mut out: Vec<char> = Vec::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let (mapped, skip) = match (c, next) {
            ('p', Some('h')) => ('f', 2),
            ('c', Some('k')) => ('k', 2),
            ('c' | 'q', _) => ('k', 1),
            ('z', _) => ('s', 1),
            ('y', _) => ('i', 1),
            _ => (c, 1),
        };
        if out.last() != Some(&mapped) {
            out.push(mapped);
        }
        i += skip;
    }
    out
}

/// Optimal-string-alignment distance, with or without substitutions, capped at `limit + 1`
/// (both keys are at most [`MAX_KEY`] characters).
fn distance(a: &[char], b: &[char], substitutions: bool, limit: usize) -> usize {
    if a.len().abs_diff(b.len()) > limit || a.len() > MAX_KEY || b.len() > MAX_KEY {
        return limit + 1;
    }
    let n = b.len();
    let mut prev2 = [0usize; MAX_KEY + 1];
    let mut prev = [0usize; MAX_KEY + 1];
    let mut cur = [0usize; MAX_KEY + 1];
    for (j, slot) in prev.iter_mut().enumerate().take(n + 1) {
        *slot = j;
    }
    for i in 1..=a.len() {
        cur[0] = i;
        let mut row_min = cur[0];
        for j in 1..=n {
            let same = a[i - 1] == b[j - 1];
            let mut best = (prev[j] + 1).min(cur[j - 1] + 1);
            if same {
                best = best.min(prev[j - 1]);
            } else if substitutions {
                best = best.min(prev[j - 1] + 1);
            }
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && !same {
                best = best.min(prev2[j - 2] + 1);
            }
            cur[j] = best;
            row_min = row_min.min(best);
        }
        if row_min > limit {
            return limit + 1;
        }
        prev2 = prev;
        prev = cur;
    }
    prev[n]
}

fn is_word(word: &str) -> bool {
    !word.is_empty() && word.chars().all(|c| c.is_alphabetic() && !is_cjk(c))
}

impl Lexicon {
    /// A lexicon of the words of `terms` (normalised, space-separated), protecting `known`.
    ///
    /// `terms` are (normalised term, is a `stem*` prefix term).
    pub fn new<'a>(
        terms: impl IntoIterator<Item = (&'a str, bool)>,
        known: impl IntoIterator<Item = String>,
    ) -> Self {
        let mut vocab = FastSet::default();
        let mut stems = FastSet::default();
        for (term, prefix) in terms {
            let mut words = term.split(' ').peekable();
            while let Some(word) = words.next() {
                if !is_word(word) {
                    continue;
                }
                if prefix && words.peek().is_none() {
                    if word.chars().count() >= 4 {
                        stems.insert(word.to_owned());
                    }
                } else {
                    vocab.insert(word.to_owned());
                }
            }
        }
        let mut sorted: Vec<&String> = vocab.iter().collect();
        sorted.sort();
        let mut targets = Vec::new();
        let mut index: HashMap<u64, Vec<u32>, BuildHasherDefault<FxHasher>> = HashMap::default();
        for word in sorted {
            let chars = word.chars().count();
            let key = key(word);
            if chars < 4 || key.len() > MAX_KEY {
                continue;
            }
            let (depth, _) = allowance(chars);
            let id = u32::try_from(targets.len()).unwrap_or(u32::MAX);
            let hashes = KeyHash::new(&key);
            for skip in deletion_skips(key.len(), depth) {
                let ids = index.entry(hashes.without(skip)).or_default();
                if ids.last() != Some(&id) {
                    ids.push(id);
                }
            }
            targets.push(Target {
                word: word.clone(),
                key,
                chars,
            });
        }
        let max_len = vocab.iter().map(String::len).max().unwrap_or(0);
        let starts = vocab
            .iter()
            .chain(stems.iter())
            .filter_map(|w| {
                w.char_indices()
                    .nth(MIN_PIECE)
                    .map(|(end, _)| w[..end].to_owned())
            })
            .collect();
        Self {
            vocab,
            stems,
            targets,
            index,
            known: known.into_iter().collect(),
            starts,
            max_len,
        }
    }

    /// Every vocabulary word.
    pub fn vocabulary(&self) -> impl Iterator<Item = &str> {
        self.vocab.iter().map(String::as_str)
    }

    /// What the fixed form would make of `word` standing alone: the vocabulary words it splits
    /// into, or the vocabulary word it is corrected to; `None` when it stays as it is.
    pub fn rewrite_of(&self, word: &str) -> Option<String> {
        if !is_word(word) || self.is_known(word) {
            return None;
        }
        if word.len() >= MIN_COMPOUND
            && let Some(pieces) = self.split_compound(word)
        {
            return Some(
                pieces
                    .iter()
                    .map(|&(s, e, _)| &word[s..e])
                    .collect::<Vec<_>>()
                    .join(" "),
            );
        }
        self.correct(word).map(str::to_owned)
    }

    /// A run-together word's pieces: vocabulary words only, or for a long word, with function
    /// words and a few letters left over.
    fn split_compound(&self, word: &str) -> Option<Vec<(usize, usize, bool)>> {
        self.segment(word, Split::Strict).or_else(|| {
            (word.chars().count() >= MIN_LOOSE_COMPOUND)
                .then(|| self.segment(word, Split::Loose))
                .flatten()
        })
    }

    /// Whether `word` is a vocabulary word or starts with the stem of a `stem*` term.
    fn is_vocab_or_stemmed(&self, word: &str) -> bool {
        self.vocab.contains(word)
            || word
                .char_indices()
                .map(|(i, c)| i + c.len_utf8())
                .skip(3)
                .any(|end| self.stems.contains(&word[..end]))
    }

    /// Whether some vocabulary word of [`MIN_PIECE`]+ characters may start like `text`.
    fn could_start(&self, text: &str) -> bool {
        text.char_indices()
            .nth(MIN_PIECE)
            .map_or(text.chars().count() == MIN_PIECE, |(end, _)| {
                self.starts.contains(&text[..end])
            })
            || self.vocab.contains(text)
    }

    fn is_known(&self, word: &str) -> bool {
        self.vocab.contains(word) || self.known.contains(word)
    }

    /// The vocabulary word `word` is a misspelling of, under the rules of the module docs.
    pub fn correct(&self, word: &str) -> Option<&str> {
        if word.len() < 4 || !is_word(word) || self.is_known(word) {
            return None;
        }
        let key = key(word);
        if key.len() > MAX_KEY {
            return None;
        }
        let hashes = KeyHash::new(&key);
        let mut best: Option<(usize, u32)> = None;
        for skip in deletion_skips(key.len(), if key.len() >= 9 { 2 } else { 1 }) {
            let Some(ids) = self.index.get(&hashes.without(skip)) else {
                continue;
            };
            for &id in ids {
                let Some(target) = self.targets.get(id as usize) else {
                    continue;
                };
                let (limit, substitutions) = allowance(target.chars);
                let d = distance(&key, &target.key, substitutions, limit);
                if d <= limit && best.is_none_or(|(bd, bid)| (d, id) < (bd, bid)) {
                    best = Some((d, id));
                }
            }
        }
        best.and_then(|(_, id)| self.targets.get(id as usize))
            .map(|t| t.word.as_str())
    }

    /// Byte ranges of the pieces `word` splits into, each marked `true` for a vocabulary word,
    /// or `None` when it does not split under `mode`'s rules: vocabulary pieces of
    /// [`MIN_PIECE`]+ characters, function words (except in [`Split::Strict`]) and leftover
    /// letters in runs between them (not in [`Split::Strict`]); fewest leftovers, then fewest
    /// pieces.
    fn segment(&self, word: &str, mode: Split) -> Option<Vec<(usize, usize, bool)>> {
        // Cheap pre-check for run-together words: they start with a vocabulary word.
        if mode == Split::Strict
            && (!self.could_start(word)
                || !word
                    .char_indices()
                    .map(|(i, c)| i + c.len_utf8())
                    .skip(MIN_PIECE - 1)
                    .take_while(|&end| end <= self.max_len)
                    .any(|end| end < word.len() && self.vocab.contains(&word[..end])))
        {
            return None;
        }
        let bounds: Vec<usize> = word
            .char_indices()
            .map(|(i, _)| i)
            .chain([word.len()])
            .collect();
        let n = bounds.len() - 1;
        // best[i]: (leftover chars, pieces, vocabulary pieces, previous index, piece kind)
        type Step = (usize, usize, usize, usize, Piece);
        let mut best: Vec<Option<Step>> = vec![None; n + 1];
        best[0] = Some((0, 0, 0, 0, Piece::Rest));
        for i in 0..n {
            let Some((rest, pieces, vocab, _, _)) = best[i] else {
                continue;
            };
            let mut relax = |j: usize, cand: Step| {
                if best[j].is_none_or(|b| (cand.0, cand.1) < (b.0, b.1)) {
                    best[j] = Some(cand);
                }
            };
            if mode != Split::Strict {
                relax(i + 1, (rest + 1, pieces, vocab, i, Piece::Rest));
                for f in FUNCTION_WORDS {
                    if word[bounds[i]..].starts_with(f) {
                        let j = i + f.chars().count();
                        relax(j, (rest, pieces + 1, vocab, i, Piece::Function));
                    }
                }
            }
            for j in (i + MIN_PIECE)..=n {
                let piece = &word[bounds[i]..bounds[j]];
                if piece.len() > self.max_len {
                    break;
                }
                if self.vocab.contains(piece) {
                    relax(j, (rest, pieces + 1, vocab + 1, i, Piece::Vocab));
                }
            }
        }
        let (rest, pieces, vocab, _, _) = best[n]?;
        let enough = match mode {
            Split::Strict => vocab >= 2,
            Split::Loose => vocab >= 2 && rest * 4 <= n,
            Split::Spaced => {
                (vocab >= 2 || (vocab == 1 && pieces >= 2) || (vocab == 1 && rest > 0))
                    && rest * 2 <= n
            }
        };
        if !enough {
            return None;
        }
        let mut cuts = Vec::new();
        let mut j = n;
        while j > 0 {
            let (_, _, _, i, kind) = best[j]?;
            cuts.push((bounds[i], bounds[j], kind));
            j = i;
        }
        cuts.reverse();
        // Merge adjacent leftover characters into one word.
        let mut merged: Vec<(usize, usize, Piece)> = Vec::new();
        for cut in cuts {
            match merged.last_mut() {
                Some(last) if last.2 == Piece::Rest && cut.2 == Piece::Rest => last.1 = cut.1,
                _ => merged.push(cut),
            }
        }
        Some(
            merged
                .into_iter()
                .map(|(s, e, kind)| (s, e, kind == Piece::Vocab))
                .collect(),
        )
    }

    /// The fixed form of `base`, or `None` when no word changed.
    pub fn fix(&self, base: &Form) -> Option<Form> {
        if self.vocab.is_empty() {
            return None;
        }
        let text = base.text.as_str();
        let mut spans = Vec::new();
        let mut start = 0;
        for word in text.split(' ') {
            if !word.is_empty() {
                spans.push((start, start + word.len()));
            }
            start += word.len() + 1;
        }
        let spaced = |(s, e): (usize, usize)| {
            let first = text[s..e].chars().next().map_or(0, char::len_utf8);
            e - s > first && base.boundary.get(s + first).copied().unwrap_or(false)
        };
        let mut out = Builder::default();
        let mut scratch = String::new();
        let mut changed = false;
        let mut i = 0;
        while i < spans.len() {
            let span = spans[i];
            let word = &text[span.0..span.1];
            // 1. Spaced-letter runs.
            if spaced(span)
                && let Some(pieces) = self.segment(word, Split::Spaced)
            {
                for (s, e, _) in pieces {
                    out.copy(base, span.0 + s, span.0 + e);
                }
                changed = true;
                i += 1;
                continue;
            }
            if is_word(word) && !spaced(span) {
                // 2. Split words.
                if let Some(joined) = self.join(text, &spans[i..], &spaced, &mut scratch) {
                    out.joined(base, &spans[i..i + joined]);
                    changed = true;
                    i += joined;
                    continue;
                }
                if !self.is_known(word) {
                    // 3. Run-together words.
                    if word.len() >= MIN_COMPOUND
                        && let Some(pieces) = self.split_compound(word)
                    {
                        for (s, e, _) in pieces {
                            out.copy(base, span.0 + s, span.0 + e);
                        }
                        changed = true;
                        i += 1;
                        continue;
                    }
                    // 4. Misspellings.
                    if let Some(fixed) = self.correct(word) {
                        out.replaced(base, span.0, span.1, fixed);
                        changed = true;
                        i += 1;
                        continue;
                    }
                }
            }
            out.copy(base, span.0, span.1);
            i += 1;
        }
        changed.then(|| out.finish())
    }

    /// How many words from the start of `spans` (2 or 3) join into a vocabulary word.
    fn join(
        &self,
        text: &str,
        spans: &[(usize, usize)],
        spaced: &impl Fn((usize, usize)) -> bool,
        joined: &mut String,
    ) -> Option<usize> {
        joined.clear();
        // A join starts like a vocabulary word: check that on the first word (and its
        // successor when the first is too short to tell).
        let first = &text[spans.first()?.0..spans.first()?.1];
        if first.chars().count() >= MIN_PIECE && !self.could_start(first) {
            return None;
        }
        for (k, &span) in spans.iter().take(3).enumerate() {
            let part = &text[span.0..span.1];
            if !is_word(part) || (k > 0 && spaced(span)) || joined.len() + part.len() > self.max_len
            {
                return None;
            }
            joined.push_str(part);
            if k >= 1
                && joined.chars().count() >= MIN_JOINED
                && self.is_vocab_or_stemmed(joined)
                && !spans[..=k].iter().all(|s| self.is_known(&text[s.0..s.1]))
            {
                return Some(k + 1);
            }
        }
        None
    }
}

/// Assembles a [`Form`] word by word, keeping the map back to the input.
#[derive(Default)]
struct Builder {
    text: String,
    origin: Vec<(usize, usize)>,
}

impl Builder {
    fn space(&mut self) {
        if !self.text.is_empty() {
            let at = self.origin.last().map_or(0, |o| o.1);
            self.text.push(' ');
            self.origin.push((at, at));
        }
    }

    fn copy(&mut self, base: &Form, s: usize, e: usize) {
        self.space();
        self.text.push_str(&base.text[s..e]);
        self.origin.extend_from_slice(&base.origin[s..e]);
    }

    fn joined(&mut self, base: &Form, spans: &[(usize, usize)]) {
        self.space();
        for &(s, e) in spans {
            self.text.push_str(&base.text[s..e]);
            self.origin.extend_from_slice(&base.origin[s..e]);
        }
    }

    fn replaced(&mut self, base: &Form, s: usize, e: usize, word: &str) {
        self.space();
        let first = base.origin.get(s).map_or(0, |o| o.0);
        let last = base.origin.get(e.saturating_sub(1)).map_or(first, |o| o.1);
        self.text.push_str(word);
        self.origin
            .extend(std::iter::repeat_n((first, last), word.len()));
    }

    fn finish(self) -> Form {
        let bytes = self.text.as_bytes();
        let boundary = (0..=bytes.len())
            .map(|p| p == 0 || p == bytes.len() || bytes[p - 1] == b' ' || bytes[p] == b' ')
            .collect();
        Form {
            kind: FormKind::Fixed,
            text: self.text,
            origin: self.origin,
            boundary,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::normalize;

    fn lexicon() -> Lexicon {
        Lexicon::new(
            [
                "naked",
                "little girl",
                "decapitated",
                "sexy",
                "child",
                "nude",
                "kid",
                "rapist",
                "the pope",
                "suicide",
            ]
            .map(|t| (t, false))
            .into_iter()
            .chain([("decapitad", true)]),
            ["baked".to_owned(), "therapist".to_owned()],
        )
    }

    fn fixed(input: &str) -> Option<String> {
        let lex = lexicon();
        let n = normalize(input);
        let base = n.forms().get(1).unwrap_or(&n.forms()[0]);
        lex.fix(base).map(|f| f.text().to_owned())
    }

    #[test]
    fn distance_rule_by_length() {
        let lex = lexicon();
        assert_eq!(lex.correct("nakd"), Some("naked"));
        assert_eq!(lex.correct("naekd"), Some("naked"));
        assert_eq!(lex.correct("nakked"), Some("naked"));
        // Substitution is not allowed on five-letter words.
        assert_eq!(lex.correct("nakid"), None);
        assert_eq!(lex.correct("baked"), None);
        assert_eq!(lex.correct("sexxy"), Some("sexy"));
        assert_eq!(lex.correct("sexi"), Some("sexy"));
        assert_eq!(lex.correct("sexo"), None);
        assert_eq!(lex.correct("chyld"), Some("child"));
        assert_eq!(lex.correct("suicyde"), Some("suicide"));
        assert_eq!(lex.correct("suicde"), Some("suicide"));
        assert_eq!(lex.correct("decapitatid"), Some("decapitated"));
        assert_eq!(lex.correct("decapatatid"), Some("decapitated"));
        assert_eq!(lex.correct("decapatatyd"), Some("decapitated"));
        assert_eq!(lex.correct("dekapotatod"), Some("decapitated"));
        assert_eq!(lex.correct("dekopotatod"), None);
    }

    #[test]
    fn fixed_form_repairs_words() {
        assert_eq!(fixed("na ked girl").as_deref(), Some("naked girl"));
        assert_eq!(
            fixed("n-a-k-e-d l-i-t-t-l-e g-i-r-l").as_deref(),
            Some("naked little girl")
        );
        assert_eq!(fixed("NAKEDCHILD").as_deref(), Some("naked child"));
        assert_eq!(fixed("a sexxy chyld").as_deref(), Some("a sexy child"));
        assert_eq!(fixed("n4kked k1d").as_deref(), Some("naked kid"));
        // Known words stay.
        assert_eq!(fixed("a therapist and baked bread"), None);
        assert_eq!(fixed("a lake at dawn"), None);
    }

    #[test]
    fn fixed_form_maps_back_to_input() {
        let lex = lexicon();
        let input = "a na ked chyld";
        let n = normalize(input);
        let f = lex.fix(&n.forms()[0]).expect("changed");
        assert_eq!(f.text(), "a naked child");
        let r = f.origin_range(2, 7).expect("range");
        assert_eq!(&input[r], "na ked");
        let r = f.origin_range(8, 13).expect("range");
        assert_eq!(&input[r], "chyld");
    }
}
