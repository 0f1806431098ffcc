//! Text normalisation before matching: the same function turns prompts and list terms into
//! comparable forms, so obfuscated spellings meet the plain terms of the lists.
//!
//! Steps, per character of the input (each output byte remembers the input bytes it came from,
//! so a rewrite can replace the original text):
//! 1. Unicode compatibility decomposition (the "K" of NFKC, from `unicode-normalization`):
//!    fullwidth letters, ligatures, superscripts, circled letters become plain ones.
//! 2. Combining marks are dropped, which removes diacritics (`é` → `e`); a few letters that do
//!    not decompose are spelled out (`ß` → `ss`, `ø` → `o`, `ł` → `l`, ...).
//! 3. A confusables map turns common Cyrillic and Greek look-alikes into Latin letters.
//! 4. Lower-casing.
//! 5. Zero-width and soft-hyphen characters and apostrophes vanish (`assassin's` → `assassins`);
//!    every other character that is not a letter or digit separates words.
//! 6. Runs of three or more one-character words are joined (`k i l l`, `k.i.l.l` → `kill`);
//!    inside such a run every position counts as a word boundary, so `a k i l l` still
//!    contains the whole word `kill`.
//!
//! That gives the **plain** form. When some word mixes letters with leetspeak characters
//! (`0 1 3 4 5 7 @ $`), two **leet** forms are made as well, folding those characters to letters
//! in such mixed words only (`k1ll` → `kill`, `s3x` → `sex`, but `1990` and `4 cats` stay as
//! they are): one reads `1` as `i`, the other as `l`. Matching runs on every form, so leet
//! folding can only add matches for words that were obfuscated to begin with.
//!
//! **Words** ([`Words`]) are the words of the plain form, located by the input bytes they came
//! from. They are the unit of co-occurrence windows: a match in any form is mapped back to the
//! input and from there to plain-form words, so all forms count distance the same way. By
//! construction punctuation, emoji and whitespace count as nothing (`naked!!! ... child` is two
//! adjacent words), a spaced-out or dotted word counts as one (`n.u.d.e`), and a run of filler
//! single letters collapses into one word (`x x x x x` → `xxxxx`), so none of them can be used to
//! push two terms apart; only real words (including numbers) count.

use std::ops::Range;

use unicode_normalization::char::{decompose_compatible, is_combining_mark};

/// Which variant of the text a [`Form`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormKind {
    /// Normalised, no leetspeak folding.
    Plain,
    /// Leetspeak folded, `1` read as `i`.
    LeetI,
    /// Leetspeak folded, `1` read as `l`.
    LeetL,
    /// Words repaired against the policy's vocabulary (see [`crate::lexicon`]): split words
    /// joined, spaced-letter runs and run-together words split into listed words, misspelled
    /// words replaced by the listed word they are close to.
    Fixed,
}

/// One normalised variant of a text, with word boundaries and a map back to the input.
#[derive(Debug, Clone)]
pub struct Form {
    pub(crate) kind: FormKind,
    pub(crate) text: String,
    /// For each byte of `text`: the byte range of the input character it came from.
    pub(crate) origin: Vec<(usize, usize)>,
    /// For each byte position `0..=text.len()`: whether a word may start or end there.
    pub(crate) boundary: Vec<bool>,
}

impl Form {
    /// Which variant this is.
    pub fn kind(&self) -> FormKind {
        self.kind
    }

    /// The normalised text: lower-case words separated by single spaces.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether `start..end` of [`Form::text`] is a whole word or phrase.
    pub fn is_whole_word(&self, start: usize, end: usize) -> bool {
        start < end
            && self.boundary.get(start).copied().unwrap_or(false)
            && self.boundary.get(end).copied().unwrap_or(false)
    }

    /// Whether `start..end` of [`Form::text`] is a match of a list term: a whole word or phrase,
    /// except that an edge which is a CJK character (Han, kana, Hangul) needs no boundary, since
    /// those scripts do not separate words; a `prefix` term (written `stem*`) needs no boundary
    /// at its end, so a stem matches every inflected form.
    pub fn is_term_match(&self, start: usize, end: usize, prefix: bool) -> bool {
        if start >= end {
            return false;
        }
        let start_ok = self.boundary.get(start).copied().unwrap_or(false)
            || self
                .text
                .get(start..)
                .and_then(|t| t.chars().next())
                .is_some_and(is_cjk);
        let end_ok = prefix
            || self.boundary.get(end).copied().unwrap_or(false)
            || self
                .text
                .get(..end)
                .and_then(|t| t.chars().next_back())
                .is_some_and(is_cjk);
        start_ok && end_ok
    }

    /// The input byte range that produced `start..end` of [`Form::text`] (edge spaces ignored).
    pub fn origin_range(&self, start: usize, end: usize) -> Option<Range<usize>> {
        let bytes = self.text.as_bytes();
        let (mut s, mut e) = (start, end.min(bytes.len()));
        while s < e && bytes[s] == b' ' {
            s += 1;
        }
        while e > s && bytes[e - 1] == b' ' {
            e -= 1;
        }
        if s >= e {
            return None;
        }
        let first = self.origin.get(s)?;
        let last = self.origin.get(e - 1)?;
        Some(first.0..last.1)
    }
}

/// All forms of one input text; the plain form always comes first.
#[derive(Debug, Clone)]
pub struct Normalized {
    pub(crate) forms: Vec<Form>,
}

impl Normalized {
    /// The plain form's text.
    pub fn plain(&self) -> &str {
        self.forms
            .first()
            .map(|f| f.text.as_str())
            .unwrap_or_default()
    }

    /// Every form: plain first, then leet forms where they differ.
    pub fn forms(&self) -> &[Form] {
        &self.forms
    }
}

/// Normalises `input` into its plain form and, where it has leetspeak, its leet forms.
pub fn normalize(input: &str) -> Normalized {
    let items = fold(input);
    let plain = render(&tokenize(&items, true), FormKind::Plain);
    let mut forms = vec![plain];
    let tokens = tokenize(&items, false);
    let foldable = tokens
        .iter()
        .filter(|t| t.leet_foldable())
        .collect::<Vec<_>>();
    if !foldable.is_empty() {
        forms.push(render(&tokens, FormKind::LeetI));
        if foldable.iter().any(|t| t.units.iter().any(|u| u.ch == '1')) {
            forms.push(render(&tokens, FormKind::LeetL));
        }
    }
    Normalized { forms }
}

/// The words of a prompt's plain form, each as the byte range of the input it came from: the
/// unit in which co-occurrence windows are measured (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct Words {
    /// Input byte range of each plain-form word, in order.
    spans: Vec<(usize, usize)>,
}

impl Words {
    /// The plain-form words of `normalized`.
    pub fn of(normalized: &Normalized) -> Self {
        let Some(plain) = normalized.forms.first() else {
            return Self::default();
        };
        let mut spans = Vec::new();
        let mut start = 0;
        for word in plain.text.split(' ') {
            let end = start + word.len();
            if let Some(range) = plain.origin_range(start, end) {
                spans.push((range.start, range.end));
            }
            start = end + 1;
        }
        Self { spans }
    }

    /// Number of words.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// True when the plain form has no words.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// First and last word (0-based, inclusive) of the match `start..end` of `form`.
    ///
    /// A match is located through the input bytes it came from, so a match in a leet form gets
    /// the indices of the plain words it overlaps. A match that overlaps no plain word (only
    /// possible for leetspeak symbols, which the plain form drops) counts as the next word.
    pub fn locate(&self, form: &Form, start: usize, end: usize) -> Option<(usize, usize)> {
        let input = form.origin_range(start, end)?;
        let last_index = self.spans.len().checked_sub(1)?;
        let first = self
            .spans
            .partition_point(|&(_, word_end)| word_end <= input.start)
            .min(last_index);
        let last = self
            .spans
            .partition_point(|&(word_start, _)| word_start < input.end)
            .saturating_sub(1)
            .max(first);
        Some((first, last))
    }
}

/// The plain form of a list term (what the matcher compares against).
pub fn normalize_term(term: &str) -> String {
    normalize(term).plain().to_owned()
}

#[derive(Debug, Clone, Copy)]
struct Unit {
    ch: char,
    start: usize,
    end: usize,
    /// The input character was upper case right after a lower-case letter (`nakedChild`).
    camel: bool,
    /// The input character was upper case.
    upper: bool,
    /// The input character was lower case.
    lower: bool,
}

impl Unit {
    fn is_leet_symbol(&self) -> bool {
        matches!(self.ch, '@' | '$')
    }
}

#[derive(Debug, Clone, Copy)]
enum Item {
    Unit(Unit),
    Separator,
}

/// Steps 1–5: characters to units (letters, digits, leet symbols) and separators.
fn fold(input: &str) -> Vec<Item> {
    let mut items = Vec::with_capacity(input.len());
    let mut decomposed = Vec::with_capacity(4);
    let mut previous_lower = false;
    for (start, c) in input.char_indices() {
        let end = start + c.len_utf8();
        if is_ignorable(c) {
            continue;
        }
        let camel = previous_lower && c.is_uppercase();
        previous_lower = c.is_lowercase();
        decomposed.clear();
        decompose_compatible(c, |d| decomposed.push(d));
        for &d in &decomposed {
            if is_combining_mark(d) {
                continue;
            }
            for lower in confusable(d).to_lowercase() {
                let mut push = |ch: char| {
                    if ch.is_alphanumeric() || matches!(ch, '@' | '$') {
                        items.push(Item::Unit(Unit {
                            ch,
                            start,
                            end,
                            camel,
                            upper: c.is_uppercase(),
                            lower: c.is_lowercase(),
                        }));
                    } else if !is_ignorable(ch) {
                        items.push(Item::Separator);
                    }
                };
                match spelled_out(lower) {
                    Some(letters) => letters.chars().for_each(&mut push),
                    None => push(lower),
                }
            }
        }
    }
    items
}

/// Characters that vanish: apostrophes and invisible formatting characters.
fn is_ignorable(c: char) -> bool {
    matches!(
        c,
        '\'' | '`'
            | '\u{2018}'
            | '\u{2019}'
            | '\u{02BC}'
            | '\u{00AD}'
            | '\u{034F}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2060}'..='\u{2064}'
            | '\u{FEFF}'
    )
}

/// Letters without a decomposition, spelled with ASCII letters.
fn spelled_out(c: char) -> Option<&'static str> {
    Some(match c {
        'ß' => "ss",
        'æ' => "ae",
        'œ' => "oe",
        'ø' => "o",
        'ł' => "l",
        'đ' | 'ð' => "d",
        'þ' => "th",
        'ı' => "i",
        'ħ' => "h",
        _ => return None,
    })
}

/// Common Cyrillic and Greek homoglyphs of Latin letters (before lower-casing, so that upper-
/// case look-alikes such as Cyrillic `Н` map to `H`, not to the lower-case shape `н`).
fn confusable(c: char) -> char {
    match c {
        // Cyrillic upper case
        'А' => 'A',
        'В' => 'B',
        'Е' | 'Ё' => 'E',
        'З' => '3',
        'І' | 'Ӏ' => 'I',
        'Ј' => 'J',
        'К' => 'K',
        'М' => 'M',
        'Н' => 'H',
        'О' => 'O',
        'Р' => 'P',
        'С' => 'C',
        'Т' => 'T',
        'У' => 'Y',
        'Х' => 'X',
        'Ѕ' => 'S',
        'Ԁ' => 'D',
        // Cyrillic lower case
        'а' => 'a',
        'в' => 'b',
        'е' | 'ё' => 'e',
        'і' => 'i',
        'ј' => 'j',
        'к' => 'k',
        'м' => 'm',
        'н' => 'h',
        'о' => 'o',
        'р' => 'p',
        'с' => 'c',
        'т' => 't',
        'у' => 'y',
        'х' => 'x',
        'ѕ' => 's',
        'ԁ' => 'd',
        'һ' => 'h',
        'ԛ' => 'q',
        'ԝ' => 'w',
        'ӏ' => 'l',
        // Greek upper case
        'Α' => 'A',
        'Β' => 'B',
        'Ε' => 'E',
        'Ζ' => 'Z',
        'Η' => 'H',
        'Ι' => 'I',
        'Κ' => 'K',
        'Μ' => 'M',
        'Ν' => 'N',
        'Ο' => 'O',
        'Ρ' => 'P',
        'Τ' => 'T',
        'Υ' => 'Y',
        'Χ' => 'X',
        // Greek lower case
        'α' => 'a',
        'ε' => 'e',
        'ι' => 'i',
        'κ' => 'k',
        'ν' => 'v',
        'ο' => 'o',
        'ρ' => 'p',
        'τ' => 't',
        'υ' => 'u',
        'χ' => 'x',
        // Latin look-alikes outside ASCII
        'ɡ' => 'g',
        'ɑ' => 'a',
        'ɩ' => 'i',
        _ => c,
    }
}

#[derive(Debug, Clone, Default)]
struct Token {
    units: Vec<Unit>,
    /// Joined from spaced-out single characters: every inner position is a boundary.
    spaced: bool,
}

impl Token {
    /// A word made from one input character (one letter, or a Hangul syllable that
    /// decomposition turned into two or three jamo): the unit of spaced-out writing.
    fn is_one_character(&self) -> bool {
        self.units
            .first()
            .is_some_and(|first| self.units.iter().all(|u| u.start == first.start))
    }

    /// A word that mixes letters with leetspeak characters.
    fn leet_foldable(&self) -> bool {
        self.units.iter().any(|u| u.ch.is_alphabetic())
            && self
                .units
                .iter()
                .any(|u| leet(u.ch, FormKind::LeetI).is_some())
    }
}

/// Step 6: units to words. In the plain form leet symbols separate words.
fn tokenize(items: &[Item], symbols_separate: bool) -> Vec<Token> {
    let mut words: Vec<Token> = Vec::new();
    let mut current = Token::default();
    for item in items {
        match item {
            Item::Unit(unit) if !(symbols_separate && unit.is_leet_symbol()) => {
                // CJK and other scripts meet without a space in mixed prompts (`naked幼女`):
                // the change of script separates words.
                if current
                    .units
                    .last()
                    .is_some_and(|last| is_cjk(last.ch) != is_cjk(unit.ch))
                {
                    words.push(std::mem::take(&mut current));
                }
                current.units.push(*unit);
            }
            _ => {
                if !current.units.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
        }
    }
    if !current.units.is_empty() {
        words.push(current);
    }
    let mut words = split_camel_case(words);

    // Join runs of >= 3 one-character words.
    let mut out = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        let run = words[i..]
            .iter()
            .take_while(|w| w.is_one_character())
            .count();
        if run >= 3 {
            let units = words[i..i + run]
                .iter()
                .flat_map(|w| w.units.iter().copied())
                .collect();
            out.push(Token {
                units,
                spaced: true,
            });
            i += run;
        } else {
            out.push(std::mem::take(&mut words[i]));
            i += 1;
        }
    }
    out
}

/// Splits CamelCase words. A cut goes before an upper-case letter that follows a lower-case
/// one (`naked|Child`) or that starts a word after an upper-case run (`A|Boy`). A word with three
/// or more cuts and parts of three characters on average is a whole prompt written in
/// CamelCase (`ABoyChainedToAWall`) and is cut everywhere; otherwise a cut is made only where
/// both parts have at least three characters, so alternating case (`NaKeD`, `sExY`) and short
/// prefixes (`iPhone`, `McQueen`) stay one word.
fn split_camel_case(words: Vec<Token>) -> Vec<Token> {
    const MIN_PART: usize = 3;
    let mut out = Vec::with_capacity(words.len());
    for word in words {
        let units = &word.units;
        let cuts: Vec<usize> = (1..units.len())
            .filter(|&k| {
                units[k].camel
                    || (units[k - 1].upper
                        && units[k].upper
                        && units.get(k + 1).is_some_and(|u| u.lower))
            })
            .collect();
        if cuts.is_empty() {
            out.push(word);
            continue;
        }
        let everywhere = cuts.len() >= 3 && units.len() >= MIN_PART * (cuts.len() + 1);
        let mut start = 0;
        for (k, &cut) in cuts.iter().enumerate() {
            let next = cuts.get(k + 1).copied().unwrap_or(units.len());
            if everywhere || (cut - start >= MIN_PART && next - cut >= MIN_PART) {
                out.push(Token {
                    units: units[start..cut].to_vec(),
                    spaced: false,
                });
                start = cut;
            }
        }
        out.push(Token {
            units: units[start..].to_vec(),
            spaced: false,
        });
    }
    out
}

/// Han, kana and Hangul (including the conjoining jamo that compatibility decomposition makes
/// of Hangul syllables): scripts written without spaces between words.
pub fn is_cjk(c: char) -> bool {
    matches!(c,
        '\u{1100}'..='\u{11FF}'
            | '\u{3040}'..='\u{30FF}'
            | '\u{3130}'..='\u{318F}'
            | '\u{31F0}'..='\u{31FF}'
            | '\u{3400}'..='\u{4DBF}'
            | '\u{4E00}'..='\u{9FFF}'
            | '\u{A960}'..='\u{A97F}'
            | '\u{AC00}'..='\u{D7FF}'
            | '\u{F900}'..='\u{FAFF}'
            | '\u{20000}'..='\u{2FA1F}')
}

/// The letter a leetspeak character stands for in `kind`.
fn leet(c: char, kind: FormKind) -> Option<char> {
    Some(match c {
        '0' => 'o',
        '1' if kind == FormKind::LeetL => 'l',
        '1' => 'i',
        '3' => 'e',
        '4' | '@' => 'a',
        '5' | '$' => 's',
        '7' => 't',
        _ => return None,
    })
}

fn render(tokens: &[Token], kind: FormKind) -> Form {
    let mut text = String::new();
    let mut origin = Vec::new();
    let mut soft = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        if i > 0 {
            let at = origin
                .last()
                .map(|o: &(usize, usize)| o.1)
                .unwrap_or_default();
            text.push(' ');
            origin.push((at, at));
        }
        let fold = kind != FormKind::Plain && token.leet_foldable();
        for (k, unit) in token.units.iter().enumerate() {
            if token.spaced && k > 0 {
                soft.push(text.len());
            }
            let ch = if fold {
                leet(unit.ch, kind).unwrap_or(unit.ch)
            } else {
                unit.ch
            };
            text.push(ch);
            origin.extend(std::iter::repeat_n((unit.start, unit.end), ch.len_utf8()));
        }
    }
    let bytes = text.as_bytes();
    let mut boundary: Vec<bool> = (0..=bytes.len())
        .map(|p| p == 0 || p == bytes.len() || bytes[p - 1] == b' ' || bytes[p] == b' ')
        .collect();
    for p in soft {
        boundary[p] = true;
    }
    Form {
        kind,
        text,
        origin,
        boundary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(input: &str) -> Vec<String> {
        normalize(input)
            .forms()
            .iter()
            .map(|f| f.text().to_owned())
            .collect()
    }

    #[test]
    fn case_punctuation_and_whitespace() {
        assert_eq!(
            texts("  A Red,   BICYCLE!! (4k) "),
            vec!["a red bicycle 4k", "a red bicycle ak"]
        );
        assert_eq!(texts("assassin's creed"), vec!["assassins creed"]);
        assert_eq!(texts("sci-fi_city/night"), vec!["sci fi city night"]);
    }

    #[test]
    fn compatibility_folding_and_diacritics() {
        assert_eq!(texts("ＦＵＬＬＷＩＤＴＨ"), vec!["fullwidth"]);
        assert_eq!(
            texts("café naïve Straße ﬁsh"),
            vec!["cafe naive strasse fish"]
        );
        assert_eq!(texts("ⓚⓘⓛⓛ"), vec!["kill"]);
    }

    #[test]
    fn homoglyphs_map_to_latin() {
        // Cyrillic а, е, о, с and Greek ο, ι.
        assert_eq!(texts("аррlе сοіn"), vec!["apple coin"]);
        assert_eq!(texts("КНОР"), vec!["khop"]);
    }

    #[test]
    fn invisible_characters_vanish() {
        assert_eq!(texts("ki\u{200B}ll so\u{00AD}ft"), vec!["kill soft"]);
    }

    #[test]
    fn spaced_letters_are_joined_with_inner_boundaries() {
        assert_eq!(texts("k i l l"), vec!["kill"]);
        assert_eq!(texts("k.i.l.l-er"), vec!["kill er"]);
        let n = normalize("a k i l l");
        let plain = &n.forms()[0];
        assert_eq!(plain.text(), "akill");
        assert!(plain.is_whole_word(1, 5));
        // Two single letters are left alone.
        assert_eq!(texts("plan b a"), vec!["plan b a"]);
    }

    #[test]
    fn leet_folds_only_mixed_words() {
        assert_eq!(
            texts("k1ll 1990 4 cats"),
            vec!["k1ll 1990 4 cats", "kill 1990 4 cats", "klll 1990 4 cats"]
        );
        assert_eq!(texts("s3x"), vec!["s3x", "sex"]);
        assert_eq!(texts("s 3 x"), vec!["s3x", "sex"]);
        // Leet symbols separate words in the plain form.
        assert_eq!(texts("@ss"), vec!["ss", "ass"]);
        assert_eq!(texts("top 10 list"), vec!["top 10 list"]);
    }

    #[test]
    fn whole_word_checks_use_boundaries() {
        let n = normalize("skin care");
        let f = &n.forms()[0];
        assert!(f.is_whole_word(0, 4));
        assert!(!f.is_whole_word(1, 4));
        assert!(f.is_whole_word(0, 9));
        assert!(!f.is_whole_word(2, 2));
    }

    #[test]
    fn origin_maps_back_to_input_bytes() {
        let input = "a Ｋ.i.l.l here";
        let n = normalize(input);
        let f = &n.forms()[0];
        assert_eq!(f.text(), "akill here");
        let range = f.origin_range(1, 5).expect("range");
        assert_eq!(&input[range], "Ｋ.i.l.l");
        let range = f.origin_range(5, 10).expect("range");
        assert_eq!(&input[range], "here");
        assert_eq!(f.origin_range(5, 6), None);
    }

    #[test]
    fn empty_and_symbol_only_inputs() {
        assert_eq!(texts(""), vec![""]);
        assert_eq!(texts("!!! ... ---"), vec![""]);
        assert_eq!(normalize_term("  Severed   HEAD "), "severed head");
    }

    /// Word indices of every whole-word occurrence of `needle` in any form of `input`.
    fn word_of(input: &str, needle: &str) -> Vec<(usize, usize)> {
        let n = normalize(input);
        let words = Words::of(&n);
        let mut found = Vec::new();
        for form in n.forms() {
            for (start, _) in form.text().match_indices(needle) {
                let end = start + needle.len();
                if form.is_whole_word(start, end) {
                    found.extend(words.locate(form, start, end));
                }
            }
        }
        found.sort_unstable();
        found.dedup();
        found
    }

    #[test]
    fn words_count_plain_form_words_only() {
        assert_eq!(Words::of(&normalize("a naked, smiling child")).len(), 4);
        assert!(Words::of(&normalize("!!! ...")).is_empty());
        // Punctuation, emoji and whitespace are not words.
        assert_eq!(
            word_of("naked!!! ... \u{1F600} ,,, child", "child"),
            vec![(1, 1)]
        );
        // Spaced-out and dotted letters are one word; so is a run of filler letters.
        assert_eq!(word_of("n.u.d.e kid", "kid"), vec![(1, 1)]);
        assert_eq!(word_of("nude x x x x x x x kid", "kid"), vec![(2, 2)]);
        // A term inside a joined run is located at that run's word.
        assert_eq!(word_of("a k i d here", "kid"), vec![(0, 0)]);
        // Phrases span several words.
        assert_eq!(word_of("a little girl", "little girl"), vec![(1, 2)]);
    }

    #[test]
    fn leet_matches_are_located_by_plain_words() {
        // `$` splits words in the plain form only; the leet form's `ass` still maps to the
        // plain words it covers, so distances agree between forms.
        assert_eq!(word_of("one a$$ two ch1ld", "child"), vec![(3, 3)]);
        assert_eq!(word_of("one a$$ two ch1ld", "ass"), vec![(1, 1)]);
        assert_eq!(word_of("s3xy k1d", "sexy"), vec![(0, 0)]);
        // `@` alone is dropped from the plain form: its leet match counts as the next word.
        assert_eq!(word_of("x @ y", "a"), vec![(1, 1)]);
    }

    #[test]
    fn camel_case_is_split_where_it_separates_words() {
        assert_eq!(texts("NakedChild"), vec!["naked child"]);
        assert_eq!(texts("HTMLParser"), vec!["html parser"]);
        // A whole prompt in CamelCase is cut everywhere, short words included.
        assert_eq!(texts("ABoyChainedToAWall"), vec!["a boy chained to a wall"]);
        // Alternating case and short prefixes stay one word.
        for word in ["NaKeD", "sExY", "iPhone", "McQueen", "SeXyChIlD"] {
            assert_eq!(texts(word), vec![word.to_lowercase()], "{word}");
        }
    }

    #[test]
    fn scripts_without_spaces_are_separated_from_latin_words() {
        assert_eq!(texts("naked幼女"), vec!["naked 幼女"]);
        assert_eq!(texts("幼女naked"), vec!["幼女 naked"]);
    }

    #[test]
    fn spaced_out_syllables_join_like_letters() {
        // A Hangul syllable decomposes into two or three jamo but is one character typed.
        let joined = normalize("고 문 당 하");
        assert_eq!(joined.plain(), normalize("고문당하").plain());
        assert_eq!(texts("幼 女 裸 体"), vec!["幼女裸体"]);
    }

    #[test]
    fn term_matches_need_no_boundary_at_cjk_edges() {
        let n = normalize("写真の幼女です");
        let f = &n.forms()[0];
        let start = f.text().find("幼女").expect("found");
        assert!(f.is_term_match(start, start + "幼女".len(), false));
        // Latin terms still need word boundaries; a prefix term needs one at its start only.
        let n = normalize("unnaked nakedness");
        let f = &n.forms()[0];
        assert!(!f.is_term_match(2, 7, false));
        assert!(!f.is_term_match(8, 13, false));
        assert!(f.is_term_match(8, 13, true));
    }

    #[test]
    fn non_latin_text_is_kept() {
        assert_eq!(texts("富士山 の 写真"), vec!["富士山 の 写真"]);
    }
}
