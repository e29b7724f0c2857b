//! Text from the daemon on the operator's terminal.
//!
//! Much of what the daemon tells the CLI was written, one way or another, by a tenant or
//! a sandbox: an event's message, a ready command's output in an error, a template's
//! source, a build step. A terminal takes escape sequences in any of it as commands
//! (move the cursor, rewrite what is shown, set the window title, on some terminals write
//! files or run programs), so none of it reaches one raw: control characters, DEL, the
//! C1 controls and the bidirectional overrides that reorder what is shown are printed
//! as escapes (`\x1b`, `\u{202e}`). A process's own output (`run`, `exec`, a terminal) is
//! the exception: it is what the user asked to see, as a terminal would show it.

use std::borrow::Cow;

fn is_hostile(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{8}' | '\u{b}'..='\u{1f}' | '\u{7f}'..='\u{9f}'
        | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}'
        | '\u{61c}')
}

/// `s` with every character a terminal would act on shown as an escape. Line feeds and
/// tabs stay.
pub fn clean(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_hostile) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_hostile(c) {
            if (c as u32) < 0x80 {
                out.push_str(&format!("\\x{:02x}", c as u32));
            } else {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Like [`clean`], on one line: line feeds are escaped too.
pub fn clean_line(s: &str) -> String {
    clean(s).replace('\n', "\\n").replace('\r', "\\r")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_shown_not_obeyed() {
        assert_eq!(clean("plain text\n\tand more"), "plain text\n\tand more");
        assert_eq!(clean("\x1b]0;pwned\x07title"), "\\x1b]0;pwned\\x07title");
        assert_eq!(clean("a\u{9b}31mb"), "a\\u{9b}31mb");
        assert_eq!(clean("x\u{202e}gnp.exe"), "x\\u{202e}gnp.exe");
        assert_eq!(clean("cr\roverwrite"), "cr\\x0doverwrite");
        assert_eq!(clean_line("two\nlines"), "two\\nlines");
    }
}
