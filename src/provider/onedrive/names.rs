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
//! The price: a local name that itself contains a look-alike where it would be turned back
//! (`a：b`, `x．`) could not show under its own name after the round trip, so it is refused
//! up front (EINVAL), as are the names OneDrive reserves (`.lock`, `CON`, `PRN`, `AUX`,
//! `NUL`, `COM0`–`COM9`, `LPT0`–`LPT9`, `desktop.ini`, `_vti_` anywhere, a leading `~$`).
//! A remote name made elsewhere with a look-alike (`会議：メモ` typed on the web) shows as
//! `会議:メモ` and is read, written, renamed and removed under that name.

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

/// The name as the mount shows it, for a name OneDrive holds.
pub fn to_local(remote: &str) -> String {
    let chars: Vec<char> = remote.chars().collect();
    let last = chars.len().saturating_sub(1);
    chars
        .iter()
        .enumerate()
        .map(|(i, &c)| match c {
            SPACE if i == 0 || i == last => ' ',
            DOT if i == last => '.',
            c => original(c).unwrap_or(c),
        })
        .collect()
}

/// The name OneDrive holds for a name of the mount, or why it cannot hold one.
pub fn to_remote(local: &str) -> Result<String, String> {
    if let Some(why) = reserved(local) {
        return Err(why);
    }
    let chars: Vec<char> = local.chars().collect();
    let last = chars.len().saturating_sub(1);
    let remote: String = chars
        .iter()
        .enumerate()
        .map(|(i, &c)| match c {
            ' ' if i == 0 || i == last => SPACE,
            '.' if i == last => DOT,
            c => look_alike(c).unwrap_or(c),
        })
        .collect();
    if to_local(&remote) != local {
        return Err(format!(
            "{local:?}: a full-width character in this place stands for one OneDrive refuses \
             (\" * : < > ? \\ |, a space at either end, a dot at the end), so the name could \
             not show as itself"
        ));
    }
    Ok(remote)
}

/// Why OneDrive refuses a name whatever its characters, if it does.
fn reserved(local: &str) -> Option<String> {
    let lower = local.to_ascii_lowercase();
    let stem = lower.split('.').next().unwrap_or("");
    let device = matches!(stem, "con" | "prn" | "aux" | "nul")
        || ((stem.starts_with("com") || stem.starts_with("lpt"))
            && stem.len() == 4
            && stem.as_bytes()[3].is_ascii_digit());
    let why = if lower == ".lock" || lower == "desktop.ini" || device {
        "a name OneDrive reserves"
    } else if lower.contains("_vti_") {
        "OneDrive reserves names containing _vti_"
    } else if local.starts_with("~$") {
        "OneDrive reserves names starting with ~$"
    } else {
        return None;
    };
    Some(format!("{local:?}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            ("a.b", "a.b"),
            ("plain name.txt", "plain name.txt"),
            (" ", "\u{2420}"),
        ] {
            assert_eq!(to_remote(local).unwrap(), remote, "{local:?}");
            assert_eq!(to_local(remote), local, "{remote:?}");
        }
    }

    #[test]
    fn look_alikes_made_elsewhere_stay_reachable() {
        // Typed on the web: shown with the ASCII character, and mapped back to itself.
        let web = "会議\u{FF1A}メモ";
        assert_eq!(to_local(web), "会議:メモ");
        assert_eq!(to_remote(&to_local(web)).unwrap(), web);
        // Positional look-alikes inside a name are literal both ways.
        for name in ["a\u{FF0E}b", "a\u{2420}b", "10月～12月"] {
            assert_eq!(to_local(name), name);
            assert_eq!(to_remote(name).unwrap(), name);
        }
    }

    #[test]
    fn names_that_could_not_show_as_themselves_or_are_reserved_are_refused() {
        for bad in [
            "a\u{FF1A}b",
            "x\u{FF0E}",
            "\u{2420}x",
            "CON",
            "con.txt",
            "LPT1",
            "desktop.ini",
            ".lock",
            "my_vti_file",
            "~$draft.docx",
        ] {
            assert!(to_remote(bad).is_err(), "{bad:?}");
        }
        for good in ["console.txt", "COM", "COMX", "lock", "~draft"] {
            assert!(to_remote(good).is_ok(), "{good:?}");
        }
    }
}
