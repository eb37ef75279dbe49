//! The text rule: what free text Kiln takes from people, whichever door it came
//! through (REST JSON, dashboard forms, multipart fields, CLI arguments).
//!
//! Text may not hold NUL or any other C0 control character except tab, newline and
//! carriage return (PostgreSQL's `text` and `jsonb` cannot hold NUL; controls do harm in
//! logs, headers and pages), and every field has a bound on its length in characters.
//! The rule is written here once: [`refused_char`] and [`check`] for any text (the HTTP
//! door's whole-body guard uses them), and one value type per kind of free text —
//! [`Prompt`], [`Description`], [`ModelName`], [`TeamName`], [`KeyName`], [`Reason`],
//! [`Actor`] — whose only constructor (`parse`) trims the text and holds the rule, so a
//! value that exists has passed it. Aggregates and use cases parse their text fields
//! into these types; a door that hands them raw text gets the same answer as any other.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest prompt (generation, refinement), in characters.
pub const PROMPT_CHARS_MAX: usize = 4_000;
/// Longest model description, in characters.
pub const DESCRIPTION_CHARS_MAX: usize = PROMPT_CHARS_MAX;
/// Longest custom-model name.
pub const MODEL_NAME_CHARS_MAX: usize = 200;
/// Longest team name.
pub const TEAM_NAME_CHARS_MAX: usize = 200;
/// Longest API-key name (a label for humans: "ci", "dashboard").
pub const KEY_NAME_CHARS_MAX: usize = 100;
/// Longest reason of a manual adjustment.
pub const ADJUSTMENT_REASON_CHARS_MAX: usize = 1_000;
/// Longest actor recorded with a manual adjustment.
pub const ADJUSTMENT_ACTOR_CHARS_MAX: usize = 200;
/// An operator's name.
pub const OPERATOR_NAME_CHARS_MAX: usize = 100;
/// Longest other short text a request names — an id in a path, a filter or cursor in a
/// query — at any door. Real ones are far shorter; the bound keeps junk out of lookups.
pub const TOKEN_CHARS_MAX: usize = 1_000;
/// Longest reference-model id (a slug such as `fashion-editorial-01`): an id from a
/// closed list, so a longer one names nothing.
pub const REFERENCE_MODEL_ID_CHARS_MAX: usize = 100;

/// Why text breaks the rule. The messages complete a sentence that starts with the
/// field's name ("prompt must be 1 to 4000 characters").
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// Nothing but white space.
    #[error("must be 1 to {chars_max} characters")]
    Empty { chars_max: usize },
    #[error("is {chars} characters long; at most {chars_max} are accepted")]
    TooLong { chars: usize, chars_max: usize },
    #[error("contains the control character U+{:04X}; text may not contain NUL or control characters other than tab, newline and carriage return", *.0 as u32)]
    Control(char),
}

/// The first character the rule refuses, if any: C0 controls other than tab, newline
/// and carriage return. (DEL and C1 controls are accepted: they harm no store.)
pub fn refused_char(text: &str) -> Option<char> {
    text.chars().find(|c| refused(*c))
}

fn refused(c: char) -> bool {
    (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r')
}

/// Checks `text` as it is (not trimmed; empty allowed): no refused character, at most
/// `chars_max` characters. For text that is not one of the value types (ids, options,
/// whole request bodies).
pub fn check(text: &str, chars_max: usize) -> Result<(), TextError> {
    if let Some(c) = refused_char(text) {
        return Err(TextError::Control(c));
    }
    let chars = text.chars().count();
    if chars > chars_max {
        return Err(TextError::TooLong { chars, chars_max });
    }
    Ok(())
}

/// `text` trimmed, if it is 1 to `chars_max` characters with no refused character.
fn parse_trimmed(text: &str, chars_max: usize) -> Result<String, TextError> {
    // Controls first: a refused character is refused wherever it sits, trimmed or not.
    if let Some(c) = refused_char(text) {
        return Err(TextError::Control(c));
    }
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(TextError::Empty { chars_max });
    }
    check(trimmed, chars_max)?;
    Ok(trimmed.to_owned())
}

/// `text` with every refused character replaced by U+FFFD: for text from a signed
/// webhook that must be kept although it breaks the rule.
pub fn storable(text: &str) -> String {
    text.chars().map(|c| if refused(c) { '\u{FFFD}' } else { c }).collect()
}

macro_rules! free_text {
    ($(#[$doc:meta])* $name:ident, $chars_max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Longest accepted value, in characters.
            pub const CHARS_MAX: usize = $chars_max;

            /// The text trimmed, if the rule accepts it: 1 to `CHARS_MAX` characters,
            /// no NUL or other control character but tab, newline and carriage return.
            pub fn parse(text: &str) -> Result<Self, TextError> {
                parse_trimmed(text, Self::CHARS_MAX).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = TextError;

            fn try_from(text: String) -> Result<Self, TextError> {
                Self::parse(&text)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

free_text!(
    /// What images to make, or how to refine a model.
    Prompt,
    PROMPT_CHARS_MAX
);
free_text!(
    /// What a custom model should capture.
    Description,
    DESCRIPTION_CHARS_MAX
);
free_text!(
    /// A custom model's name.
    ModelName,
    MODEL_NAME_CHARS_MAX
);
free_text!(
    /// A team's name.
    TeamName,
    TEAM_NAME_CHARS_MAX
);
free_text!(
    /// An API key's label.
    KeyName,
    KEY_NAME_CHARS_MAX
);
free_text!(
    /// Why an operator adjusted a balance.
    Reason,
    ADJUSTMENT_REASON_CHARS_MAX
);
free_text!(
    /// An operator's name (who the console and the audit say acted).
    OperatorName,
    OPERATOR_NAME_CHARS_MAX
);
free_text!(
    /// Who made a manual change (`operator`, `key:{id}`).
    Actor,
    ADJUSTMENT_ACTOR_CHARS_MAX
);

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[track_caller]
    fn check_prompt(text: &str, expected: Result<&str, TextError>) {
        assert_eq!(Prompt::parse(text).as_ref().map(Prompt::as_str).map_err(|e| *e), expected, "{text:?}");
    }

    #[test]
    fn prompts_are_trimmed_bounded_and_free_of_controls() {
        check_prompt("  a cat ", Ok("a cat"));
        check_prompt("line one\r\n\tline two", Ok("line one\r\n\tline two"));
        check_prompt("", Err(TextError::Empty { chars_max: PROMPT_CHARS_MAX }));
        check_prompt(" \n\t ", Err(TextError::Empty { chars_max: PROMPT_CHARS_MAX }));
        check_prompt("a\u{0}b", Err(TextError::Control('\u{0}')));
        check_prompt("bell\u{7}", Err(TextError::Control('\u{7}')));
        check_prompt("esc\u{1b}[31m", Err(TextError::Control('\u{1b}')));
        // A control that trimming would remove is refused all the same.
        check_prompt("\u{0}", Err(TextError::Control('\u{0}')));
        check_prompt(" x\u{1f}", Err(TextError::Control('\u{1f}')));
        // DEL and C1 are not C0: accepted.
        check_prompt("\u{7f}\u{85}x", Ok("\u{7f}\u{85}x"));
        let longest = "é".repeat(PROMPT_CHARS_MAX);
        check_prompt(&longest, Ok(&longest));
        check_prompt(&"x".repeat(PROMPT_CHARS_MAX + 1), Err(TextError::TooLong { chars: PROMPT_CHARS_MAX + 1, chars_max: PROMPT_CHARS_MAX }));
    }

    #[test]
    fn each_kind_has_its_bound() {
        type Accepts = fn(&str) -> bool;
        let kinds: [(Accepts, usize); 8] = [
            (|t| Prompt::parse(t).is_ok(), PROMPT_CHARS_MAX),
            (|t| Description::parse(t).is_ok(), DESCRIPTION_CHARS_MAX),
            (|t| ModelName::parse(t).is_ok(), MODEL_NAME_CHARS_MAX),
            (|t| TeamName::parse(t).is_ok(), TEAM_NAME_CHARS_MAX),
            (|t| KeyName::parse(t).is_ok(), KEY_NAME_CHARS_MAX),
            (|t| Reason::parse(t).is_ok(), ADJUSTMENT_REASON_CHARS_MAX),
            (|t| Actor::parse(t).is_ok(), ADJUSTMENT_ACTOR_CHARS_MAX),
            (|t| OperatorName::parse(t).is_ok(), OPERATOR_NAME_CHARS_MAX),
        ];
        for (accepts, max) in kinds {
            assert!(accepts(&"x".repeat(max)), "{max}");
            assert!(!accepts(&"x".repeat(max + 1)), "{max}");
            assert!(!accepts("a\u{0}b"));
            assert!(!accepts("  "));
        }
    }

    #[test]
    fn deserializing_holds_the_rule() {
        let name: ModelName = serde_json::from_str("\" Ava \"").expect("a name");
        assert_eq!(name.as_str(), "Ava");
        assert!(serde_json::from_str::<ModelName>("\"a\\u0000b\"").is_err());
        assert!(serde_json::from_str::<ModelName>("\"\"").is_err());
        assert_eq!(serde_json::to_string(&name).expect("json"), "\"Ava\"");
    }

    #[test]
    fn storable_text_replaces_only_refused_characters() {
        assert_eq!(storable("a\u{0}b\u{1}c\td\ne\rf\u{7f}"), "a\u{fffd}b\u{fffd}c\td\ne\rf\u{7f}");
    }

    proptest! {
        /// Whatever the text: a prompt exists only if it is trimmed, 1 to the bound
        /// characters long, and holds no refused character; otherwise the error says
        /// which rule it broke.
        #[test]
        fn a_parsed_prompt_always_holds_the_rule(text in proptest::collection::vec(prop_oneof![
            4 => any::<char>(),
            2 => (0u32..0x20).prop_map(|c| char::from_u32(c).expect("ascii")),
            1 => Just(' '),
        ], 0..40).prop_map(|chars| chars.into_iter().collect::<String>())) {
            match Prompt::parse(&text) {
                Ok(prompt) => {
                    let value = prompt.as_str();
                    prop_assert_eq!(value, text.trim());
                    prop_assert!(!value.is_empty());
                    prop_assert!(refused_char(value).is_none());
                    prop_assert!(value.chars().count() <= PROMPT_CHARS_MAX);
                }
                Err(TextError::Control(c)) => {
                    prop_assert!(text.contains(c));
                    prop_assert!((c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r'));
                }
                Err(TextError::Empty { .. }) => prop_assert!(text.trim().is_empty() && refused_char(&text).is_none()),
                Err(TextError::TooLong { .. }) => prop_assert!(false, "40 characters are within the bound"),
            }
        }

        /// `storable` output always passes the rule and keeps every accepted character.
        #[test]
        fn storable_text_passes_the_rule(text in any::<String>()) {
            let stored = storable(&text);
            prop_assert!(refused_char(&stored).is_none());
            prop_assert_eq!(stored.chars().count(), text.chars().count());
            if refused_char(&text).is_none() {
                prop_assert_eq!(stored, text);
            }
        }

        /// The lengths are counted in characters, not bytes.
        #[test]
        fn bounds_count_characters(n in 1usize..=MODEL_NAME_CHARS_MAX + 5, c in prop_oneof![Just('x'), Just('é'), Just('🔥')]) {
            let text: String = std::iter::repeat_n(c, n).collect();
            prop_assert_eq!(ModelName::parse(&text).is_ok(), n <= MODEL_NAME_CHARS_MAX);
        }
    }
}
