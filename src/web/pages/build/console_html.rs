//! Console bytes to HTML: ANSI colours become spans, every text is escaped, and nothing of
//! the log is lost: escape sequences are dropped (they are not text), and the text a `\r`
//! overwrote stays in the DOM, hidden, so the console's text content (less the escape codes)
//! is the stored log, while the reader sees a progress line's final text.
//!
//! Each line becomes `<span class="ln" data-end="OFFSET">…\n</span>`, where OFFSET is the byte
//! offset just past the line: the page uses it to drop lines it already shows. Colour state
//! carries across the lines of one call and starts afresh with each call.

use std::fmt::Write;

/// The text style an SGR sequence leaves in force.
#[derive(Debug, Clone, Default, PartialEq)]
struct Style {
    fg: Option<Colour>,
    bg: Option<Colour>,
    bold: bool,
    dim: bool,
    italic: bool,
    underline: bool,
}

/// One of the 256 terminal colours, each styled by a class of `app.css` (`ansi-fg-N`,
/// `ansi-bg-N`): the pages' Content-Security-Policy allows no inline style, so a true colour
/// is shown as the nearest of the 256.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Colour(u8);

impl Style {
    fn is_plain(&self) -> bool {
        *self == Style::default()
    }

    fn open_tag(&self) -> String {
        let mut classes = Vec::new();
        if let Some(Colour(n)) = self.fg {
            classes.push(format!("ansi-fg-{n}"));
        }
        if let Some(Colour(n)) = self.bg {
            classes.push(format!("ansi-bg-{n}"));
        }
        for (on, class) in [
            (self.bold, "ansi-bold"),
            (self.dim, "ansi-dim"),
            (self.italic, "ansi-italic"),
            (self.underline, "ansi-underline"),
        ] {
            if on {
                classes.push(class.to_string());
            }
        }
        let mut tag = String::from("<span");
        if !classes.is_empty() {
            let _ = write!(tag, " class=\"{}\"", classes.join(" "));
        }
        tag.push('>');
        tag
    }

    /// Applies one SGR parameter list (`ESC [ … m`).
    fn apply(&mut self, params: &str) {
        let codes: Vec<u16> = if params.is_empty() {
            vec![0]
        } else {
            params
                .split([';', ':'])
                .map(|p| p.parse().unwrap_or(0))
                .collect()
        };
        let mut i = 0;
        while i < codes.len() {
            match codes[i] {
                0 => *self = Style::default(),
                1 => self.bold = true,
                2 => self.dim = true,
                3 => self.italic = true,
                4 => self.underline = true,
                22 => {
                    self.bold = false;
                    self.dim = false;
                }
                23 => self.italic = false,
                24 => self.underline = false,
                c @ 30..=37 => self.fg = Some(Colour((c - 30) as u8)),
                c @ 90..=97 => self.fg = Some(Colour((c - 90 + 8) as u8)),
                39 => self.fg = None,
                c @ 40..=47 => self.bg = Some(Colour((c - 40) as u8)),
                c @ 100..=107 => self.bg = Some(Colour((c - 100 + 8) as u8)),
                49 => self.bg = None,
                c @ (38 | 48) => {
                    let colour = match codes.get(i + 1) {
                        Some(5) => {
                            let n = codes.get(i + 2).copied().unwrap_or(0).min(255) as u8;
                            i += 2;
                            Some(Colour(n))
                        }
                        Some(2) => {
                            let channel =
                                |k: usize| codes.get(i + k).copied().unwrap_or(0).min(255) as u8;
                            let rgb = Colour(nearest_256(channel(2), channel(3), channel(4)));
                            i += 4;
                            Some(rgb)
                        }
                        _ => None,
                    };
                    if c == 38 {
                        self.fg = colour;
                    } else {
                        self.bg = colour;
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }
}

/// The colour of 16–255 in xterm's palette: a 6×6×6 cube, then 24 greys.
fn rgb_256(n: u8) -> (u8, u8, u8) {
    match n {
        16..=231 => {
            let n = n - 16;
            let level = |v: u8| if v == 0 { 0 } else { 55 + v * 40 };
            (level(n / 36), level((n / 6) % 6), level(n % 6))
        }
        232..=255 => {
            let grey = 8 + (n - 232) * 10;
            (grey, grey, grey)
        }
        _ => (0, 0, 0),
    }
}

/// The colour of 16–255 nearest to a true colour.
fn nearest_256(r: u8, g: u8, b: u8) -> u8 {
    let distance = |(x, y, z): (u8, u8, u8)| {
        let d = |p: u8, q: u8| (i32::from(p) - i32::from(q)).pow(2);
        d(x, r) + d(y, g) + d(z, b)
    };
    (16..=255u8)
        .min_by_key(|n| distance(rgb_256(*n)))
        .unwrap_or(16)
}

fn escape_into(out: &mut String, text: &str) {
    // Byte by byte, copying the stretches between the characters replaced: each of those is
    // ASCII, so every cut falls between characters. (Pushed one char at a time, a followed
    // log's rendering was a tenth of the server's CPU.)
    let mut from = 0;
    for (i, byte) in text.bytes().enumerate() {
        let replacement = match byte {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            b'\'' => "&#39;",
            // A raw CR would be read as a newline by the HTML parser; the reference keeps it.
            b'\r' => "&#13;",
            // NUL is not allowed in HTML text; show it as the replacement character.
            b'\0' => "\u{fffd}",
            _ => continue,
        };
        out.push_str(&text[from..i]);
        out.push_str(replacement);
        from = i + 1;
    }
    out.push_str(&text[from..]);
}

/// Renders one line's text (without its `\n`), appending to `out` and updating `style`.
fn render_line(out: &mut String, line: &str, style: &mut Style) {
    // The text before the last lone `\r` was overwritten on a terminal: keep it, hidden.
    let body = line.strip_suffix('\r').unwrap_or(line);
    let trailing_cr = body.len() != line.len();
    let (overwritten, shown) = match body.rfind('\r') {
        Some(i) => (&body[..=i], &body[i + 1..]),
        None => ("", body),
    };
    if !overwritten.is_empty() {
        out.push_str("<span class=\"cr\">");
        render_text(out, overwritten, style);
        out.push_str("</span>");
    }
    render_text(out, shown, style);
    if trailing_cr {
        out.push_str("<span class=\"cr\">&#13;</span>");
    }
}

/// Text with escape sequences: SGR changes the style, every other sequence is dropped. The
/// text between two sequences is escaped as one stretch, inside one span per style.
fn render_text(out: &mut String, text: &str, style: &mut Style) {
    let mut open = false;
    let mut rest = text;
    loop {
        let (plain, sequence) = match rest.find('\u{1b}') {
            Some(i) => (&rest[..i], Some(&rest[i..])),
            None => (rest, None),
        };
        if !plain.is_empty() {
            if !open && !style.is_plain() {
                out.push_str(&style.open_tag());
                open = true;
            }
            escape_into(out, plain);
        }
        let Some(sequence) = sequence else { break };
        let (len, sgr) = escape_sequence(sequence);
        if let Some(parameters) = sgr {
            if open {
                out.push_str("</span>");
                open = false;
            }
            style.apply(parameters);
        }
        rest = &sequence[len..];
    }
    if open {
        out.push_str("</span>");
    }
}

/// The escape sequence `text` starts with (at its ESC): its length in bytes, and an SGR's
/// parameters. CSI runs to a final byte in `@`..`~`, OSC to BEL or ESC (`ESC \` whole), any
/// other escape is two characters; one left unfinished runs to the end of the text.
fn escape_sequence(text: &str) -> (usize, Option<&str>) {
    let mut chars = text.char_indices().skip(1);
    match chars.next() {
        None => (text.len(), None),
        Some((_, '[')) => {
            for (j, c) in chars {
                if ('@'..='~').contains(&c) {
                    return (j + 1, (c == 'm').then(|| &text[2..j]));
                }
            }
            (text.len(), None)
        }
        Some((_, ']')) => {
            for (j, c) in chars {
                if c == '\u{7}' {
                    return (j + 1, None);
                }
                if c == '\u{1b}' {
                    let st = if text[j + 1..].starts_with('\\') {
                        2
                    } else {
                        1
                    };
                    return (j + st, None);
                }
            }
            (text.len(), None)
        }
        Some((j, c)) => (j + c.len_utf8(), None),
    }
}

/// Renders `bytes`, which start at byte offset `start` of the log, one span per line. A last
/// line without `\n` is rendered too (callers pass one only when the log is complete).
pub fn render(bytes: &[u8], start: i64) -> String {
    // Sized for each line's span at once (about 48 bytes with its offset): growing the buffer
    // as it went copied a window of short lines several times.
    let lines = memchr::memchr_iter(b'\n', bytes).count() + 1;
    let mut out = String::with_capacity(bytes.len() + lines * 48 + 64);
    let mut style = Style::default();
    let mut offset = start;
    for line in bytes.split_inclusive(|b| *b == b'\n') {
        offset += line.len() as i64;
        let (content, newline) = match line.strip_suffix(b"\n") {
            Some(content) => (content, true),
            None => (line, false),
        };
        let _ = write!(out, "<span class=\"ln\" data-end=\"{offset}\">");
        render_line(&mut out, &String::from_utf8_lossy(content), &mut style);
        if newline {
            out.push('\n');
        }
        out.push_str("</span>");
    }
    out
}

/// The offset just past the last `\n` in `bytes` (which start at `start`), or `start`.
pub fn complete_lines_end(bytes: &[u8], start: i64) -> i64 {
    match memchr::memrchr(b'\n', bytes) {
        Some(i) => start + i as i64 + 1,
        None => start,
    }
}

/// Where to cut `bytes` near `cut` when a line must be sent in pieces: not inside a UTF-8
/// character (it would show as two U+FFFD) and not inside an escape sequence (its tail would
/// show as text). Moves the cut back a little if needed.
pub fn safe_cut(bytes: &[u8], cut: usize) -> usize {
    let cut = cut.min(bytes.len());
    let mut at = cut;
    // A character is split when its first byte (the last before the cut that is no
    // continuation, 10xxxxxx) starts more bytes than come before the cut. Callers cut at
    // the end of what they have read, so what follows the cut is not looked at.
    if let Some(lead) = (cut.saturating_sub(3)..cut)
        .rev()
        .find(|&i| bytes[i] & 0xC0 != 0x80)
    {
        let len = match bytes[lead] {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        if lead + len > cut {
            at = lead;
        }
    }
    // An escape sequence started in the last few bytes and not finished before the cut.
    let window = at.saturating_sub(32);
    if let Some(esc) = bytes[window..at]
        .iter()
        .rposition(|b| *b == 0x1b)
        .map(|i| window + i)
    {
        let after = &bytes[esc + 1..at];
        let finished = match after.first() {
            None => false,
            Some(b'[') => after[1..].iter().any(|b| (0x40..=0x7e).contains(b)),
            Some(b']') => after.contains(&0x07),
            Some(_) => true,
        };
        if !finished {
            at = esc;
        }
    }
    if at == 0 { cut } else { at }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a browser's `textContent` would give: tags dropped, entities decoded.
    fn text_content(html: &str) -> String {
        let mut out = String::new();
        let mut in_tag = false;
        let mut entity = String::new();
        let mut in_entity = false;
        for c in html.chars() {
            match c {
                '<' => in_tag = true,
                '>' if in_tag => in_tag = false,
                _ if in_tag => {}
                '&' => {
                    in_entity = true;
                    entity.clear();
                }
                ';' if in_entity => {
                    in_entity = false;
                    out.push_str(match entity.as_str() {
                        "amp" => "&",
                        "lt" => "<",
                        "gt" => ">",
                        "quot" => "\"",
                        "#39" => "'",
                        "#13" => "\r",
                        other => panic!("unexpected entity {other}"),
                    });
                }
                _ if in_entity => entity.push(c),
                c => out.push(c),
            }
        }
        out
    }

    #[test]
    fn colours_become_spans_and_codes_leave_no_text() {
        let html = render(b"\x1b[31mred\x1b[0m plain \x1b[1;32mbold green\x1b[0m\n", 0);
        assert!(
            html.contains("<span class=\"ansi-fg-1\">red</span>"),
            "{html}"
        );
        assert!(
            html.contains("<span class=\"ansi-fg-2 ansi-bold\">bold green</span>"),
            "{html}"
        );
        assert_eq!(text_content(&html), "red plain bold green\n");
    }

    #[test]
    fn a_progress_line_shows_its_final_text_but_keeps_every_byte() {
        let html = render(b"50%\r100%\n", 0);
        assert!(
            html.contains("<span class=\"cr\">50%&#13;</span>100%"),
            "{html}"
        );
        assert_eq!(text_content(&html), "50%\r100%\n");
        // CRLF line endings keep their CR too, hidden.
        assert_eq!(text_content(&render(b"dos\r\n", 0)), "dos\r\n");
    }

    #[test]
    fn markup_is_escaped_and_invalid_utf8_is_replaced() {
        let html = render(b"<script>alert('x')</script> & \xff\xfe\n", 0);
        assert!(!html.contains("<script>"));
        assert_eq!(
            text_content(&html),
            "<script>alert('x')</script> & \u{fffd}\u{fffd}\n"
        );
    }

    #[test]
    fn each_line_carries_the_offset_after_it() {
        let html = render(b"ab\ncd\nlast", 10);
        assert!(html.contains("data-end=\"13\""));
        assert!(html.contains("data-end=\"16\""));
        assert!(html.contains("data-end=\"20\""));
        assert_eq!(complete_lines_end(b"ab\ncd\nlast", 10), 16);
        assert_eq!(complete_lines_end(b"none", 10), 10);
    }

    #[test]
    fn other_escape_sequences_are_dropped_and_256_colours_are_classes() {
        let html = render(b"\x1b[2K\x1b]0;title\x07\x1b[38;5;208morange\x1b[39m\n", 0);
        assert_eq!(text_content(&html), "orange\n");
        assert!(html.contains("class=\"ansi-fg-208\""), "{html}");
        let html = render(b"\x1b[38;2;255;135;1;48;2;10;10;10mtrue\n", 0);
        assert!(html.contains("class=\"ansi-fg-208 ansi-bg-232\""), "{html}");
        assert!(!html.contains("style="), "no inline style: {html}");
    }

    /// Every class a colour can get is in the stylesheet, with xterm's colour.
    #[test]
    fn the_stylesheet_has_each_of_the_256_colours() {
        let css = include_str!("../../../../assets/app.css");
        for n in 16..=255u8 {
            let (r, g, b) = rgb_256(n);
            let hex = format!("#{r:02x}{g:02x}{b:02x}");
            assert!(
                css.contains(&format!(".ansi-fg-{n} {{ color: {hex}; }}")),
                "ansi-fg-{n} {hex}"
            );
            assert!(
                css.contains(&format!(".ansi-bg-{n} {{ background: {hex}; }}")),
                "ansi-bg-{n} {hex}"
            );
        }
    }

    #[test]
    fn pieces_of_a_long_line_are_cut_between_characters_and_sequences() {
        let text = "aé".as_bytes(); // 'é' is two bytes
        assert_eq!(safe_cut(text, 2), 1, "not inside é");
        assert_eq!(safe_cut(text, 3), 3);
        let coloured = b"abc\x1b[31mred";
        assert_eq!(safe_cut(coloured, 6), 3, "not inside ESC [31m");
        assert_eq!(safe_cut(coloured, 8), 8, "after a finished sequence");
        assert_eq!(safe_cut(b"\x1b[3", 3), 3, "no better place: keep the cut");
    }

    #[test]
    fn colour_state_carries_across_lines() {
        let html = render(b"\x1b[34mone\ntwo\x1b[0m\n", 0);
        assert_eq!(html.matches("ansi-fg-4").count(), 2, "{html}");
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::{render, safe_cut};

    /// Found with the properties below. Callers cut at the end of the bytes they have read,
    /// where the old check (a continuation byte just after the cut) never looked: a window
    /// ending inside a character split it. And a run of stray continuation bytes after a
    /// character moved the cut into the character.
    #[test]
    fn a_cut_at_the_end_of_a_window_or_after_stray_bytes_splits_no_character() {
        assert_eq!(safe_cut(&"abé".as_bytes()[..3], 3), 2);
        assert_eq!(safe_cut(&"ab😀".as_bytes()[..5], 5), 2);
        assert_eq!(safe_cut("abé".as_bytes(), 4), 4);
        let stray = b"a\xf0\x9f\x98\x80\x80\x80\x80x";
        assert_eq!(
            safe_cut(stray, 7),
            7,
            "between stray bytes, after the character"
        );
        assert_eq!(safe_cut(stray, 3), 1, "inside the character");
    }

    /// What an HTML parser sees in our output.
    #[derive(Debug, PartialEq)]
    enum Piece {
        Open {
            class: Option<String>,
            end: Option<i64>,
        },
        Close,
        /// Text, entities decoded.
        Text(String),
    }

    /// Reads `html` strictly: the only tags are `<span( class="[a-z0-9 -]*")?( data-end="N")?>`
    /// and `</span>`; outside them no `<`, `>` or `"`, no raw CR or NUL (an HTML parser would
    /// change both), and `&` only in the entities `escape_into` writes.
    fn pieces(html: &str) -> Result<Vec<Piece>, String> {
        let mut out = Vec::new();
        let mut text = String::new();
        let mut rest = html;
        while let Some(c) = rest.chars().next() {
            if c == '<' {
                if !text.is_empty() {
                    out.push(Piece::Text(std::mem::take(&mut text)));
                }
                let (piece, after) = tag(rest).ok_or_else(|| format!("a raw < at {rest:?}"))?;
                out.push(piece);
                rest = after;
                continue;
            }
            rest = &rest[c.len_utf8()..];
            match c {
                '>' | '"' | '\r' | '\0' => return Err(format!("a raw {c:?} before {rest:?}")),
                '&' => {
                    let (entity, after) = rest
                        .split_once(';')
                        .ok_or_else(|| format!("a raw & before {rest:?}"))?;
                    text.push(match entity {
                        "amp" => '&',
                        "lt" => '<',
                        "gt" => '>',
                        "quot" => '"',
                        "#39" => '\'',
                        "#13" => '\r',
                        _ => return Err(format!("a raw & before {rest:?}")),
                    });
                    rest = after;
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            out.push(Piece::Text(text));
        }
        Ok(out)
    }

    /// One of our tags at the start of `s`, and what follows it.
    fn tag(s: &str) -> Option<(Piece, &str)> {
        if let Some(after) = s.strip_prefix("</span>") {
            return Some((Piece::Close, after));
        }
        let mut rest = s.strip_prefix("<span")?;
        let mut class = None;
        if let Some(after) = rest.strip_prefix(" class=\"") {
            let (value, after) = after.split_once('"')?;
            if !value
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, ' ' | '-'))
            {
                return None;
            }
            class = Some(value.to_string());
            rest = after;
        }
        let mut end = None;
        if let Some(after) = rest.strip_prefix(" data-end=\"") {
            let (value, after) = after.split_once('"')?;
            if value.is_empty() || !value.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            end = Some(value.parse().ok()?);
            rest = after;
        }
        let after = rest.strip_prefix('>')?;
        Some((Piece::Open { class, end }, after))
    }

    /// Checks the output's shape and gives its text content (what `textContent` gives).
    fn checked_text(html: &str, bytes: &[u8], start: i64) -> Result<String, TestCaseError> {
        let pieces = pieces(html).map_err(TestCaseError::fail)?;
        let mut depth = 0usize;
        let mut ends = Vec::new();
        let mut text = String::new();
        for piece in &pieces {
            match piece {
                Piece::Open { class, end } => {
                    let line = class.as_deref() == Some("ln") && end.is_some();
                    // Lines are the top level, and only lines are.
                    prop_assert_eq!(line, depth == 0, "{}", html);
                    if let Some(end) = end {
                        prop_assert!(line, "data-end on a span that is no line: {}", html);
                        ends.push(*end);
                    }
                    depth += 1;
                }
                Piece::Close => {
                    prop_assert!(depth > 0, "an unopened </span>: {}", html);
                    depth -= 1;
                }
                Piece::Text(t) => {
                    prop_assert!(depth > 0, "text outside a line: {}", html);
                    text.push_str(t);
                }
            }
        }
        prop_assert_eq!(depth, 0, "unclosed spans: {}", html);
        prop_assert!(ends.windows(2).all(|w| w[0] < w[1]), "data-end {:?}", ends);
        prop_assert_eq!(ends.len(), bytes.split_inclusive(|b| *b == b'\n').count());
        if !bytes.is_empty() {
            prop_assert_eq!(ends.last().copied(), Some(start + bytes.len() as i64));
        }
        Ok(text)
    }

    /// The text the console keeps of plain bytes: all of it, read as UTF-8 with each invalid
    /// sequence as U+FFFD, and NUL (not allowed in HTML) as U+FFFD too.
    fn kept(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).replace('\0', "\u{fffd}")
    }

    /// A piece of console output: text (never ESC) or a whole escape sequence, as
    /// `(bytes, is text)`.
    fn token() -> impl Strategy<Value = (Vec<u8>, bool)> {
        let text = |s: &str| (s.as_bytes().to_vec(), true);
        let params = "[0-9;:]{0,12}";
        prop_oneof![
            4 => prop::collection::vec(any::<u8>().prop_filter("ESC", |b| *b != 0x1b), 1..8)
                .prop_map(|b| (b, true)),
            3 => prop::sample::select(vec![
                text("\r"), text("\n"), text("\r\n"), text("<"), text(">"), text("&"),
                text("\""), text("'"), text("\0"), text("é"), text("€"), text("😀"),
                (b"\xe2\x82".to_vec(), true), (b"\x80".to_vec(), true),
                (b"\x80\x80\x80".to_vec(), true),
                (b"\xff".to_vec(), true),
                text("style=\"x\""), text("<span>"), text("&amp;"),
            ]),
            // SGR and other CSI sequences.
            2 => (params, prop::sample::select(vec!['m', 'm', 'K', 'H', 'J', 'A', '@', '~']))
                .prop_map(|(p, f)| (format!("\x1b[{p}{f}").into_bytes(), false)),
            // OSC (a title, a hyperlink), ended by BEL or ST.
            1 => ("[ -~]{0,20}", prop::bool::ANY).prop_map(|(p, bel)| {
                let end = if bel { "\x07" } else { "\x1b\\" };
                (format!("\x1b]{p}{end}").into_bytes(), false)
            }),
            // Two-character escapes.
            1 => prop::sample::select(vec!['7', '8', 'M', 'c', '=', '>'])
                .prop_map(|c| (format!("\x1b{c}").into_bytes(), false)),
        ]
    }

    /// Console output of well-formed pieces, and the text it holds. Each run of text between
    /// two sequences is read on its own: an invalid byte before a sequence does not join a
    /// byte after it.
    fn console() -> impl Strategy<Value = (Vec<u8>, String)> {
        prop::collection::vec(token(), 0..60).prop_map(|tokens| {
            let mut bytes = Vec::new();
            let mut text = String::new();
            let mut run = Vec::new();
            for (b, is_text) in tokens {
                if is_text {
                    run.extend_from_slice(&b);
                } else {
                    text.push_str(&kept(&std::mem::take(&mut run)));
                }
                bytes.extend_from_slice(&b);
            }
            text.push_str(&kept(&run));
            (bytes, text)
        })
    }

    /// Output no program should write but any may: stray ESC, unfinished sequences.
    fn garbage() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop_oneof![
                3 => token().prop_map(|(b, _)| b),
                1 => prop::sample::select(vec![
                    &b"\x1b"[..], b"\x1b[", b"\x1b]", b"\x1b[38;5", b"\x1b[38;2;1",
                ])
                .prop_map(<[u8]>::to_vec),
            ],
            0..40,
        )
        .prop_map(|pieces| pieces.concat())
    }

    /// A point of `bytes` far enough in that `safe_cut` has room to move back (the callers'
    /// windows are kilobytes long), if there is one.
    fn cut_of(bytes: &[u8], at: prop::sample::Index) -> Option<usize> {
        const ROOM: usize = 40;
        (bytes.len() >= ROOM).then(|| ROOM + at.index(bytes.len() - ROOM + 1))
    }

    fn text_of(bytes: &[u8], start: i64) -> Result<String, TestCaseError> {
        checked_text(&render(bytes, start), bytes, start)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_bytes_render_as_balanced_escaped_lines(
            bytes in prop::collection::vec(any::<u8>(), 0..300), start in 0i64..1 << 40,
        ) {
            text_of(&bytes, start)?;
        }

        #[test]
        fn stray_escapes_render_as_balanced_escaped_lines(bytes in garbage(), start in 0i64..1000) {
            text_of(&bytes, start)?;
        }

        /// Without escape sequences, every byte is text.
        #[test]
        fn the_text_of_plain_bytes_is_all_of_them(
            bytes in prop::collection::vec(any::<u8>().prop_filter("ESC", |b| *b != 0x1b), 0..300),
        ) {
            prop_assert_eq!(text_of(&bytes, 0)?, kept(&bytes));
        }

        #[test]
        fn the_text_is_the_log_less_its_escape_sequences(
            (bytes, text) in console(), start in 0i64..1000,
        ) {
            prop_assert_eq!(text_of(&bytes, start)?, text);
        }

        /// Dense UTF-8, whole and broken: cut anywhere, inside the bytes or at their end, the two
        /// pieces read as the whole does. (Four ASCII bytes first: a cut with no better place
        /// than 0 stays where it was, on purpose.)
        #[test]
        fn a_cut_splits_no_character(
            tail in prop::collection::vec(
                prop::sample::select(vec![
                    0xf0u8, 0x9f, 0x98, 0x80, 0xc3, 0xa9, 0xe2, 0x82, 0xac, b'a',
                ]),
                0..16,
            ),
            at in any::<prop::sample::Index>(),
            at_the_end in prop::bool::ANY,
        ) {
            let bytes = [&b"abcd"[..], &tail].concat();
            let cut = 4 + at.index(tail.len() + 1);
            let at = if at_the_end { safe_cut(&bytes[..cut], cut) } else { safe_cut(&bytes, cut) };
            prop_assert!(at <= cut && cut - at <= 3, "{} for {}", at, cut);
            prop_assert_eq!(kept(&bytes[..at]) + &kept(&bytes[at..]), kept(&bytes));
        }

        /// A long line goes out in pieces cut by `safe_cut` inside the log (a window read
        /// from the middle of it).
        #[test]
        fn pieces_cut_inside_the_log_show_the_same_text(
            (bytes, _) in console(), at in any::<prop::sample::Index>(),
        ) {
            let Some(cut) = cut_of(&bytes, at) else { return Ok(()) };
            let at = safe_cut(&bytes, cut);
            prop_assert!(at <= cut && at > 0);
            let two = text_of(&bytes[..at], 0)? + &text_of(&bytes[at..], at as i64)?;
            prop_assert_eq!(two, text_of(&bytes, 0)?);
        }

        /// ... and at the end of what is stored so far (the live view's pending line, a
        /// catch-up or "Show all" window), where the next bytes are not known yet.
        #[test]
        fn pieces_cut_at_the_end_of_a_window_show_the_same_text(
            (bytes, _) in console(), at in any::<prop::sample::Index>(),
        ) {
            let Some(cut) = cut_of(&bytes, at) else { return Ok(()) };
            let at = safe_cut(&bytes[..cut], cut);
            prop_assert!(at <= cut && at > 0);
            let two = text_of(&bytes[..at], 0)? + &text_of(&bytes[at..], at as i64)?;
            prop_assert_eq!(two, text_of(&bytes, 0)?);
        }
    }
}
