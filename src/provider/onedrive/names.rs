//! Names OneDrive and SharePoint refuse, mapped reversibly (issue 10).
//!
//! OneDrive refuses `" * : < > ? \ |` in names, a leading or trailing space and a trailing
//! `.` (provider-apis §2.4). A local name with any of them is stored under a name where
//! each such character is its full-width look-alike, the way rclone and OneDrive's own
//! Windows client show them:
//!
//! | local | remote |
//! |---|---|
//! | `" * : < > ? \ \|` anywhere | `＂ ＊ ： ＜ ＞ ？ ＼ ｜` (U+FF02 U+FF0A U+FF1A U+FF1C U+FF1E U+FF1F U+FF3C U+FF5C) |
//! | a leading or trailing space | `␠` (U+2420) |
//! | a trailing `.` | `．` (U+FF0E) |
//!
//! and the other way round when listing: a remote name shows with the look-alikes turned
//! back (the positional ones only where they stand for something: a `．` inside a name
//! stays `．`). Since OneDrive can never hold the characters on the left, no two remote
//! names show as one local name, so every remote file stays reachable; and a file made
//! through the mount shows again under exactly its own name.
//!
//! A look-alike of the first group that is itself part of a local name (Chinese and
//! Japanese punctuation: `第一章：简介`) is stored with `‛` (U+201B) before it
//! (`第一章‛：简介`), and `‛` before such a look-alike is read back as the look-alike alone.
//! A remote name made elsewhere with a look-alike (`会議：メモ` typed on the web) shows as
//! `会議:メモ` and is read, written, renamed and removed under that name; a remote `．` or
//! `.．` shows as itself (never as `.` or `..`).
//!
//! Refused up front (EINVAL): the few local names that could not show as themselves after
//! the round trip (a literal `␠` at either end or `．` at the end, `‛` right before one of
//! the refused characters), and the names OneDrive reserves (`.lock`, `CON`, `PRN`, `AUX`,
//! `NUL`, `COM0`–`COM9`, `LPT0`–`LPT9` and `¹²³`, `desktop.ini`, `_vti_` anywhere, a
//! leading `~$`), judged on the name as OneDrive would hold it (`CON.` is `CON．` there,
//! which OneDrive takes).

/// Forbidden anywhere, and the look-alike each is stored as.
const ANYWHERE: [(char, char); 8] = [
    ('"', '\u{FF02}'),
    ('*', '\u{FF0A}'),
    (':', '\u{FF1A}'),
    ('<', '\u{FF1C}'),
    ('>', '\u{FF1E}'),
    ('?', '\u{FF1F}'),
    ('\\', '\u{FF3C}'),
    ('|', '\u{FF5C}'),
];
/// A leading or trailing space.
const SPACE: char = '\u{2420}';
/// A trailing dot.
const DOT: char = '\u{FF0E}';

fn look_alike(c: char) -> Option<char> {
    ANYWHERE.iter().find(|(a, _)| *a == c).map(|(_, w)| *w)
}

fn original(w: char) -> Option<char> {
    ANYWHERE.iter().find(|(_, x)| *x == w).map(|(a, _)| *a)
}

/// Put before a look-alike that is itself part of the name (not standing for a refused
/// character), so that it shows as itself: `第一章：简介` is `第一章‛：简介` on OneDrive.
const QUOTE: char = '\u{201B}'; // ‛ SINGLE HIGH-REVERSED-9 QUOTATION MARK

/// The name as the mount shows it, for a name OneDrive holds. Never `.` or `..`: a remote
/// `．` or `.．` shows as itself.
pub fn to_local(remote: &str) -> String {
    let chars: Vec<char> = remote.chars().collect();
    let last = chars.len().saturating_sub(1);
    let mut out = String::with_capacity(remote.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            QUOTE if i < last && original(chars[i + 1]).is_some() => {
                out.push(chars[i + 1]);
                i += 2;
                continue;
            }
            SPACE if i == 0 || i == last => out.push(' '),
            DOT if i == last => out.push('.'),
            c => out.push(original(c).unwrap_or(c)),
        }
        i += 1;
    }
    if out == "." || out == ".." {
        return remote.to_owned();
    }
    out
}

/// The name OneDrive holds for a name of the mount (whatever it is; [`refusal`] says
/// whether OneDrive can hold it and show it back as itself).
pub fn encode(local: &str) -> String {
    let chars: Vec<char> = local.chars().collect();
    let last = chars.len().saturating_sub(1);
    let mut out = String::with_capacity(local.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        match c {
            ' ' if i == 0 || i == last => out.push(SPACE),
            '.' if i == last && local != "." && local != ".." => out.push(DOT),
            c if original(c).is_some() => {
                out.push(QUOTE);
                out.push(c);
            }
            c => out.push(look_alike(c).unwrap_or(c)),
        }
    }
    out
}

/// Why OneDrive cannot hold a name of the mount so that it shows as itself, if so.
pub fn refusal(local: &str) -> Option<String> {
    let remote = encode(local);
    if let Some(why) = reserved(&remote) {
        return Some(format!("{local:?}: {why}"));
    }
    if to_local(&remote) != local {
        return Some(format!(
            "{local:?}: a character in this place would be read back as another \
             (a look-alike of a space at either end or of a dot at the end, or ‛ before one \
             of \" * : < > ? \\ |), so the name could not show as itself on OneDrive"
        ));
    }
    None
}

/// Why OneDrive refuses a name (as OneDrive holds it) whatever its characters, if it does.
fn reserved(remote: &str) -> Option<&'static str> {
    let lower = remote.to_lowercase();
    let stem = lower.split('.').next().unwrap_or("");
    let stem_chars: Vec<char> = stem.chars().collect();
    let device = matches!(stem, "con" | "prn" | "aux" | "nul")
        || ((stem.starts_with("com") || stem.starts_with("lpt"))
            && stem_chars.len() == 4
            && (stem_chars[3].is_ascii_digit() || matches!(stem_chars[3], '¹' | '²' | '³')));
    if lower == ".lock" || lower == "desktop.ini" || device {
        Some("a name OneDrive reserves")
    } else if lower.contains("_vti_") {
        Some("OneDrive reserves names containing _vti_")
    } else if remote.starts_with("~$") {
        Some("OneDrive reserves names starting with ~$")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name made through the mount, as OneDrive holds it, and shown back as itself.
    fn round_trip(local: &str) -> String {
        assert_eq!(refusal(local), None, "{local:?} refused");
        let remote = encode(local);
        assert_eq!(to_local(&remote), local, "{local:?} via {remote:?}");
        remote
    }

    #[test]
    fn refused_characters_round_trip_through_look_alikes() {
        for (local, remote) in [
            ("a:b.txt", "a\u{FF1A}b.txt"),
            (
                "what? \"why\" *|<>\\",
                "what\u{FF1F} \u{FF02}why\u{FF02} \u{FF0A}\u{FF5C}\u{FF1C}\u{FF1E}\u{FF3C}",
            ),
            (" lead", "\u{2420}lead"),
            ("trail ", "trail\u{2420}"),
            ("end.", "end\u{FF0E}"),
            ("CON.", "CON\u{FF0E}"),
            ("a.b", "a.b"),
            ("plain name.txt", "plain name.txt"),
            (" ", "\u{2420}"),
            // Chinese and Japanese punctuation that is part of the name.
            ("第一章\u{FF1A}简介", "第一章\u{201B}\u{FF1A}简介"),
            ("\u{201B}\u{FF1F}", "\u{201B}\u{201B}\u{FF1F}"),
            ("a\u{201B}b", "a\u{201B}b"),
        ] {
            assert_eq!(round_trip(local), remote, "{local:?}");
        }
    }

    #[test]
    fn every_remote_name_shows_as_one_local_name_and_maps_back() {
        for remote in [
            "会議\u{FF1A}メモ",
            "a\u{FF0E}b",
            "a\u{2420}b",
            "\u{FF0E}",
            ".\u{FF0E}",
            "a\u{FF0E}",
            "\u{201B}x",
            "x\u{201B}",
            "\u{201B}\u{FF1A}",
            "\u{201B}\u{201B}\u{FF1A}",
            "a\u{201B}\u{2420}",
            "CON\u{FF0E}",
            "~$lock.docx",
        ] {
            let local = to_local(remote);
            assert!(local != "." && local != "..", "{remote:?}");
            assert_eq!(encode(&local), remote, "{remote:?} shows as {local:?}");
        }
        assert_eq!(to_local("会議\u{FF1A}メモ"), "会議:メモ");
        assert_eq!(to_local("\u{FF0E}"), "\u{FF0E}");
    }

    #[test]
    fn names_that_could_not_show_as_themselves_or_are_reserved_are_refused() {
        for bad in [
            "x\u{FF0E}",
            "\u{2420}x",
            "\u{201B}:",
            "CON",
            "con.txt",
            "LPT1",
            "COM\u{00B9}",
            "desktop.ini",
            ".lock",
            "my_vti_file",
            "~$draft.docx",
        ] {
            assert!(refusal(bad).is_some(), "{bad:?}");
        }
        for good in ["console.txt", "COM", "COMX", "lock", "~draft", "CON."] {
            assert_eq!(refusal(good), None, "{good:?}");
        }
    }
}
