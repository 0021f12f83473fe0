//! llama.cpp's GBNF grammars, translated to the Lark llguidance compiles.
//!
//! GBNF (`root ::= "yes" | "no"`) is a context-free grammar over Unicode
//! characters with no lexer: any split of the text between the symbols of a
//! rule is a valid one. llguidance's Lark has a greedy lexer in front of its
//! Earley parser, so a literal translation would change the language: with
//! `root ::= [a-z]+ "b"`, a `/[a-z]+/` lexeme would swallow the final `b`.
//! The translation keeps GBNF's language exactly in two ways:
//!
//! - a grammar whose root reaches no recursive rule is regular: every rule
//!   becomes a Lark terminal (one regular expression, matched as a whole, so
//!   no split is ever chosen) and the start rule is that one terminal;
//! - a recursive grammar becomes Lark rules whose every lexeme is one
//!   character (a one-character literal, a character class or `.`). A
//!   one-character lexeme cannot be extended, and llguidance hands every
//!   lexeme that matches a character to the parser, so the lexer makes no
//!   choice either: the Earley parser sees the characters GBNF sees.
//!
//! The syntax read is llama.cpp's (`llama-grammar.cpp`): rules `name ::=
//! alternatives` ending at a newline (a rule continues after `|` and inside
//! parentheses), sequences of `"literals"`, `[character classes]` (ranges,
//! `^` negation), `.`, rule references (names of letters, digits and `-`)
//! and `( groups )`, each followed by any of `*`, `+`, `?`, `{m}`, `{m,}`,
//! `{m,n}`; escapes `\n \r \t \\ \" \[ \] \xNN \uNNNN \UNNNNNNNN`; `#`
//! comments; the start rule is `root`. Token references (`<...>`) are
//! refused. Where llama.cpp would accept a grammar that has no sensible
//! meaning (a rule defined twice, a range whose end is before its start, an
//! empty character class) this refuses it with the line.

use std::collections::HashMap;
use std::fmt::Write as _;

/// Most repetitions one `{m,n}` may ask for (llama.cpp's bound too).
const MAX_REPETITIONS: u32 = 2000;

/// A GBNF syntax error: 1-based line and column (in characters) and what
/// was expected there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GbnfError {
    pub(crate) line: usize,
    pub(crate) column: usize,
    pub(crate) reason: String,
}

/// One element of a sequence.
#[derive(Clone, Debug)]
enum Expr {
    /// A literal string (no characters: matches the empty string).
    Literal(Vec<char>),
    /// A character class: inclusive ranges, possibly negated.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    /// `.`: any character.
    Any,
    /// A reference to the rule of this index.
    Rule(usize),
    /// `( a | b )`.
    Group(Vec<Vec<Expr>>),
    /// The element repeated `min..=max` times (`None`: unbounded).
    Repeat(Box<Expr>, u32, Option<u32>),
}

struct Rule {
    name: String,
    /// Character offset of the definition (for duplicate-rule errors).
    at: usize,
    body: Vec<Vec<Expr>>,
}

/// Translates the GBNF grammar `src` to Lark for llguidance (see the
/// module documentation for why the translation keeps the language).
pub(crate) fn to_lark(src: &str) -> Result<String, GbnfError> {
    let grammar = Parser::new(src).grammar()?;
    Ok(grammar.emit())
}

struct Grammar {
    rules: Vec<Rule>,
    root: usize,
}

struct Parser {
    chars: Vec<char>,
    i: usize,
    /// Rule names to indices, defined or only referenced so far.
    ids: HashMap<String, usize>,
    /// The first reference to each rule (offset), for undefined-rule errors.
    first_use: Vec<usize>,
    defined: Vec<Option<Rule>>,
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-'
}

impl Parser {
    fn new(src: &str) -> Self {
        Self {
            chars: src.chars().collect(),
            i: 0,
            ids: HashMap::new(),
            first_use: Vec::new(),
            defined: Vec::new(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.i).copied()
    }

    fn peek_at(&self, k: usize) -> Option<char> {
        self.chars.get(self.i + k).copied()
    }

    fn error_at(&self, at: usize, reason: impl Into<String>) -> GbnfError {
        let at = at.min(self.chars.len());
        let mut line = 1;
        let mut column = 1;
        for &c in &self.chars[..at] {
            if c == '\n' {
                line += 1;
                column = 1;
            } else {
                column += 1;
            }
        }
        GbnfError {
            line,
            column,
            reason: reason.into(),
        }
    }

    fn error(&self, reason: impl Into<String>) -> GbnfError {
        self.error_at(self.i, reason)
    }

    /// Skips spaces, tabs and `#` comments, and newlines when `newline_ok`.
    fn space(&mut self, newline_ok: bool) {
        while let Some(c) = self.peek() {
            match c {
                ' ' | '\t' => self.i += 1,
                '#' => {
                    while !matches!(self.peek(), None | Some('\n') | Some('\r')) {
                        self.i += 1;
                    }
                }
                '\n' | '\r' if newline_ok => self.i += 1,
                _ => break,
            }
        }
    }

    fn rule_id(&mut self, name: &str, at: usize) -> usize {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.defined.len();
        self.ids.insert(name.to_string(), id);
        self.defined.push(None);
        self.first_use.push(at);
        id
    }

    fn name(&mut self) -> Option<String> {
        let start = self.i;
        while self.peek().is_some_and(is_word_char) {
            self.i += 1;
        }
        (self.i > start).then(|| self.chars[start..self.i].iter().collect())
    }

    fn grammar(mut self) -> Result<Grammar, GbnfError> {
        self.space(true);
        if self.peek().is_none() {
            return Err(self.error("the grammar has no rules"));
        }
        while self.peek().is_some() {
            self.rule()?;
        }
        let mut rules = Vec::with_capacity(self.defined.len());
        for (id, rule) in std::mem::take(&mut self.defined).into_iter().enumerate() {
            match rule {
                Some(r) => rules.push(r),
                None => {
                    let name = self
                        .ids
                        .iter()
                        .find(|(_, &v)| v == id)
                        .map(|(k, _)| k.clone())
                        .unwrap_or_default();
                    return Err(
                        self.error_at(self.first_use[id], format!("undefined rule `{name}`"))
                    );
                }
            }
        }
        let Some(&root) = self.ids.get("root") else {
            return Err(self.error_at(0, "the grammar has no `root` rule (the start rule)"));
        };
        Ok(Grammar { rules, root })
    }

    fn rule(&mut self) -> Result<(), GbnfError> {
        let at = self.i;
        let Some(name) = self.name() else {
            return Err(self.error("expecting a rule name"));
        };
        self.space(false);
        if !(self.peek() == Some(':')
            && self.peek_at(1) == Some(':')
            && self.peek_at(2) == Some('='))
        {
            return Err(self.error(format!("expecting `::=` after the rule name `{name}`")));
        }
        self.i += 3;
        self.space(true);
        let body = self.alternatives(false)?;
        match self.peek() {
            None => {}
            Some('\n') => self.i += 1,
            Some('\r') => {
                self.i += 1;
                if self.peek() == Some('\n') {
                    self.i += 1;
                }
            }
            Some(c) => {
                return Err(self.error(format!("unexpected `{c}` (expecting the end of the rule)")))
            }
        }
        self.space(true);
        let id = self.rule_id(&name, at);
        if let Some(first) = &self.defined[id] {
            let before = self.error_at(first.at, "");
            return Err(self.error_at(
                at,
                format!(
                    "rule `{name}` is defined twice (first at line {})",
                    before.line
                ),
            ));
        }
        self.defined[id] = Some(Rule { name, at, body });
        Ok(())
    }

    fn alternatives(&mut self, nested: bool) -> Result<Vec<Vec<Expr>>, GbnfError> {
        let mut alts = vec![self.sequence(nested)?];
        while self.peek() == Some('|') {
            self.i += 1;
            self.space(true);
            alts.push(self.sequence(nested)?);
        }
        Ok(alts)
    }

    fn sequence(&mut self, nested: bool) -> Result<Vec<Expr>, GbnfError> {
        let mut seq: Vec<Expr> = Vec::new();
        while let Some(c) = self.peek() {
            let at = self.i;
            match c {
                '"' => {
                    self.i += 1;
                    let mut text = Vec::new();
                    loop {
                        match self.peek() {
                            None => return Err(self.error_at(at, "unterminated literal")),
                            Some('"') => break,
                            Some(_) => text.push(self.char_in_literal()?),
                        }
                    }
                    self.i += 1;
                    seq.push(Expr::Literal(text));
                }
                '[' => {
                    self.i += 1;
                    let negated = self.peek() == Some('^');
                    if negated {
                        self.i += 1;
                    }
                    let mut ranges = Vec::new();
                    loop {
                        match self.peek() {
                            None => return Err(self.error_at(at, "unterminated character class")),
                            Some(']') => break,
                            Some(_) => {
                                let lo_at = self.i;
                                let lo = self.char_in_literal()?;
                                let mut hi = lo;
                                if self.peek() == Some('-')
                                    && !matches!(self.peek_at(1), None | Some(']'))
                                {
                                    self.i += 1;
                                    hi = self.char_in_literal()?;
                                    if hi < lo {
                                        return Err(self.error_at(
                                            lo_at,
                                            format!("range end {hi:?} is before its start {lo:?}"),
                                        ));
                                    }
                                }
                                ranges.push((lo, hi));
                            }
                        }
                    }
                    self.i += 1;
                    if ranges.is_empty() && !negated {
                        return Err(self.error_at(at, "an empty character class matches nothing"));
                    }
                    seq.push(Expr::Class { negated, ranges });
                }
                '.' => {
                    self.i += 1;
                    seq.push(Expr::Any);
                }
                '(' => {
                    self.i += 1;
                    self.space(true);
                    let alts = self.alternatives(true)?;
                    if self.peek() != Some(')') {
                        return Err(self.error_at(at, "this `(` is never closed by a `)`"));
                    }
                    self.i += 1;
                    seq.push(Expr::Group(alts));
                }
                '*' | '+' | '?' | '{' => {
                    let Some(last) = seq.pop() else {
                        return Err(
                            self.error(format!("`{c}` with no element before it to repeat"))
                        );
                    };
                    let (min, max) = match c {
                        '*' => {
                            self.i += 1;
                            (0, None)
                        }
                        '+' => {
                            self.i += 1;
                            (1, None)
                        }
                        '?' => {
                            self.i += 1;
                            (0, Some(1))
                        }
                        _ => self.repetition_bounds()?,
                    };
                    seq.push(Expr::Repeat(Box::new(last), min, max));
                }
                '<' => {
                    return Err(self.error(
                        "token references (`<...>`) are not supported; write the text instead",
                    ))
                }
                c if is_word_char(c) => {
                    let name = self.name().unwrap_or_default();
                    let id = self.rule_id(&name, at);
                    seq.push(Expr::Rule(id));
                }
                _ => break,
            }
            self.space(nested);
        }
        Ok(seq)
    }

    /// `{m}`, `{m,}` or `{m,n}`, the cursor on `{`.
    fn repetition_bounds(&mut self) -> Result<(u32, Option<u32>), GbnfError> {
        let at = self.i;
        self.i += 1;
        self.space(true);
        let min = self.integer()?;
        self.space(true);
        let max = match self.peek() {
            Some('}') => Some(min),
            Some(',') => {
                self.i += 1;
                self.space(true);
                let max = if self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    let m = self.integer()?;
                    self.space(true);
                    Some(m)
                } else {
                    None
                };
                if self.peek() != Some('}') {
                    return Err(self.error("expecting `}` to close the repetition"));
                }
                max
            }
            _ => return Err(self.error("expecting `,` or `}` in the repetition")),
        };
        self.i += 1;
        if max.is_some_and(|m| m < min) {
            return Err(self.error_at(at, "repetition maximum below its minimum"));
        }
        if max.unwrap_or(min) > MAX_REPETITIONS {
            return Err(self.error_at(at, format!("more than {MAX_REPETITIONS} repetitions")));
        }
        Ok((min, max))
    }

    fn integer(&mut self) -> Result<u32, GbnfError> {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        if self.i == start {
            return Err(self.error("expecting a number"));
        }
        let digits: String = self.chars[start..self.i].iter().collect();
        digits
            .parse::<u32>()
            .ok()
            .filter(|&n| n <= MAX_REPETITIONS)
            .ok_or_else(|| self.error_at(start, format!("more than {MAX_REPETITIONS} repetitions")))
    }

    /// One character of a literal or class, escapes decoded.
    fn char_in_literal(&mut self) -> Result<char, GbnfError> {
        let at = self.i;
        let Some(c) = self.peek() else {
            return Err(self.error("unexpected end of the grammar"));
        };
        self.i += 1;
        if c != '\\' {
            return Ok(c);
        }
        let Some(e) = self.peek() else {
            return Err(self.error("unexpected end of the grammar after `\\`"));
        };
        self.i += 1;
        let digits = match e {
            'n' => return Ok('\n'),
            'r' => return Ok('\r'),
            't' => return Ok('\t'),
            '\\' | '"' | '[' | ']' => return Ok(e),
            'x' => 2,
            'u' => 4,
            'U' => 8,
            _ => return Err(self.error_at(at, format!("unknown escape `\\{e}`"))),
        };
        let mut value = 0u32;
        for _ in 0..digits {
            let Some(d) = self.peek().and_then(|c| c.to_digit(16)) else {
                return Err(self.error(format!("expecting {digits} hex digits after `\\{e}`")));
            };
            value = value * 16 + d;
            self.i += 1;
        }
        char::from_u32(value)
            .ok_or_else(|| self.error_at(at, format!("U+{value:X} is not a Unicode scalar value")))
    }
}

/// `c` in a regular expression: letters and digits as they are, anything
/// else as `\x{..}` (which means the same in and out of a class).
fn escape(c: char, out: &mut String) {
    if c.is_ascii_alphanumeric() {
        out.push(c);
    } else {
        let _ = write!(out, "\\x{{{:x}}}", c as u32);
    }
}

fn class_regex(negated: bool, ranges: &[(char, char)]) -> String {
    if negated && ranges.is_empty() {
        return ANY.to_string();
    }
    let mut out = String::from("[");
    if negated {
        out.push('^');
    }
    for &(lo, hi) in ranges {
        escape(lo, &mut out);
        if hi != lo {
            out.push('-');
            escape(hi, &mut out);
        }
    }
    out.push(']');
    out
}

/// Any character, newline included (GBNF's `.`).
const ANY: &str = "(?s:.)";

impl Grammar {
    /// Rules reachable from `root`, and whether any of them is on a cycle.
    fn reachable(&self) -> (Vec<bool>, bool) {
        fn refs(seqs: &[Vec<Expr>], out: &mut Vec<usize>) {
            for e in seqs.iter().flatten() {
                refs_expr(e, out);
            }
        }
        fn refs_expr(e: &Expr, out: &mut Vec<usize>) {
            match e {
                Expr::Rule(id) => out.push(*id),
                Expr::Group(alts) => refs(alts, out),
                Expr::Repeat(inner, _, _) => refs_expr(inner, out),
                _ => {}
            }
        }
        let edges: Vec<Vec<usize>> = self
            .rules
            .iter()
            .map(|r| {
                let mut out = Vec::new();
                refs(&r.body, &mut out);
                out
            })
            .collect();
        // Iterative DFS with colours: 1 on the stack, 2 done.
        let mut colour = vec![0u8; self.rules.len()];
        let mut cyclic = false;
        let mut stack = vec![(self.root, 0usize)];
        colour[self.root] = 1;
        while let Some(top) = stack.last_mut() {
            let node = top.0;
            if let Some(&to) = edges[node].get(top.1) {
                top.1 += 1;
                match colour[to] {
                    0 => {
                        colour[to] = 1;
                        stack.push((to, 0));
                    }
                    1 => cyclic = true,
                    _ => {}
                }
            } else {
                colour[node] = 2;
                stack.pop();
            }
        }
        (colour.iter().map(|&c| c != 0).collect(), cyclic)
    }

    fn emit(&self) -> String {
        let (reachable, recursive) = self.reachable();
        let mode = if recursive {
            Mode::Rules
        } else {
            Mode::Terminal
        };
        let mut out = String::new();
        let _ = writeln!(out, "start: {}", mode.name(self.root));
        for (id, rule) in self.rules.iter().enumerate() {
            if !reachable[id] {
                continue;
            }
            let _ = write!(out, "// {}\n{}: ", rule.name, mode.name(id));
            mode.alternatives(&rule.body, &mut out);
            out.push('\n');
        }
        out
    }
}

#[derive(Clone, Copy)]
enum Mode {
    /// Every rule a Lark terminal (the grammar is regular).
    Terminal,
    /// Every rule a Lark rule, every lexeme one character.
    Rules,
}

impl Mode {
    fn name(self, id: usize) -> String {
        match self {
            Mode::Terminal => format!("G{id}"),
            Mode::Rules => format!("g{id}"),
        }
    }

    fn alternatives(self, alts: &[Vec<Expr>], out: &mut String) {
        for (k, seq) in alts.iter().enumerate() {
            if k > 0 {
                out.push_str(" | ");
            }
            for (j, e) in seq.iter().enumerate() {
                if j > 0 {
                    out.push(' ');
                }
                self.expr(e, out);
            }
        }
    }

    fn expr(self, e: &Expr, out: &mut String) {
        match e {
            // The empty literal: an empty group.
            Expr::Literal(text) if text.is_empty() => out.push_str("( )"),
            Expr::Literal(text) => match self {
                Mode::Terminal => {
                    out.push('/');
                    for &c in text {
                        escape(c, out);
                    }
                    out.push('/');
                }
                Mode::Rules => {
                    out.push('(');
                    for (k, &c) in text.iter().enumerate() {
                        if k > 0 {
                            out.push(' ');
                        }
                        out.push('/');
                        escape(c, out);
                        out.push('/');
                    }
                    out.push(')');
                }
            },
            Expr::Class { negated, ranges } => {
                let _ = write!(out, "/{}/", class_regex(*negated, ranges));
            }
            Expr::Any => {
                let _ = write!(out, "/{ANY}/");
            }
            Expr::Rule(id) => out.push_str(&self.name(*id)),
            Expr::Group(alts) => {
                out.push('(');
                self.alternatives(alts, out);
                out.push(')');
            }
            Expr::Repeat(inner, min, max) => {
                if *max == Some(0) {
                    out.push_str("( )");
                    return;
                }
                out.push('(');
                self.expr(inner, out);
                out.push(')');
                match (min, max) {
                    (0, None) => out.push('*'),
                    (1, None) => out.push('+'),
                    (0, Some(1)) => out.push('?'),
                    (m, None) => {
                        let _ = write!(out, "{{{m},}}");
                    }
                    (m, Some(n)) if m == n => {
                        let _ = write!(out, "{{{m}}}");
                    }
                    (m, Some(n)) => {
                        let _ = write!(out, "{{{m},{n}}}");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(src: &str) -> GbnfError {
        to_lark(src).expect_err(src)
    }

    #[test]
    fn regular_grammars_are_one_terminal() {
        let lark = to_lark("root ::= [a-z]+ \"b\"  # a comment\n").unwrap();
        assert_eq!(lark, "start: G0\n// root\nG0: (/[a-z]/)+ /b/\n");
    }

    #[test]
    fn recursive_grammars_are_rules_of_one_character_lexemes() {
        let lark = to_lark("root ::= \"(\" root? \")\" | x-y\nx-y ::= \"ab\"").unwrap();
        assert_eq!(
            lark,
            "start: g0\n// root\ng0: (/\\x{28}/) (g0)? (/\\x{29}/) | g1\n// x-y\ng1: (/a/ /b/)\n"
        );
    }

    #[test]
    fn escapes_classes_and_repetitions() {
        let lark = to_lark(
            "root ::= \"\\x41\\u00e9\\t\\\"\" [^\\n\\]a-c] . d{2} d{1,} d{0,3}\nd ::= [0-9]",
        )
        .unwrap();
        assert!(
            lark.contains(
                "G1: /A\\x{e9}\\x{9}\\x{22}/ /[^\\x{a}\\x{5d}a-c]/ /(?s:.)/ (G0){2} (G0)+ (G0){0,3}"
            ),
            "{lark}"
        );
    }

    #[test]
    fn rules_continue_after_bars_and_inside_groups() {
        let src = "root ::= (\n  \"a\"\n  \"b\"\n) |\n  \"c\"\n\n# end\n";
        assert_eq!(
            to_lark(src).unwrap(),
            "start: G0\n// root\nG0: (/a/ /b/) | /c/\n"
        );
    }

    #[test]
    fn malformed_grammars_name_the_line() {
        let e = err("root ::= \"a\"\nfoo ::= [a-z\n");
        assert_eq!((e.line, e.column), (2, 9), "{e:?}");
        let e = err("root ::= x\n");
        assert_eq!((e.line, e.column), (1, 10));
        assert!(e.reason.contains("undefined rule `x`"));
        let e = err("start ::= \"a\"");
        assert!(e.reason.contains("root"));
        let e = err("root ::= \"a\"\nroot ::= \"b\"");
        assert_eq!(e.line, 2);
        assert!(e.reason.contains("twice"));
        assert_eq!(err("root ::= * \"a\"").column, 10);
        assert_eq!(err("root ::= \"\\q\"").column, 11);
        assert_eq!(err("root ::= \"\\x4\"").line, 1);
        assert!(err("root ::= [z-a]").reason.contains("before"));
        assert!(err("root ::= \"a\"{3,2}").reason.contains("maximum"));
        assert!(err("root ::= \"a\"{5000}").reason.contains("repetitions"));
        assert!(err("root ::= (\"a\"").reason.contains(")"));
        assert!(err("root = \"a\"").reason.contains("::="));
        assert!(err("root ::= <|im_end|>").reason.contains("token"));
        assert!(err("root ::= []").reason.contains("empty"));
        let e = err("root ::= \"a\"\n  \"b\"\n");
        assert_eq!(e.line, 2, "a rule ends at a newline: {e:?}");
        assert!(err("  # only a comment\n").reason.contains("no rules"));
    }
}
