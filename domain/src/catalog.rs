//! The reference-model catalog as operators change it: add a reference model, edit its
//! text, traits or preview, retire it (no longer offered for new custom models; the
//! models made from it keep working) or bring it back. Owns the [`CatalogEntry`]
//! aggregate (id = the reference model's id), whose events each carry the operator and
//! the reason ([`OperatorAct`]), and the rules of a reference model's fields, written
//! once: [`ReferenceId`], [`Category`], [`Traits`], the complexity bounds; its name and
//! description are the text rule's [`ModelName`] and [`Description`].
//!
//! The seed catalog (`kiln seed`) is product data, not events: a seeded model has no
//! stream until an operator first changes it, so a command names what the catalog
//! lists for the id now ([`Listed`]), as `PriceBook`'s commands name the newest version.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::operators::OperatorAct;
use crate::text::{self, Description, ModelName, TextError, REFERENCE_MODEL_ID_CHARS_MAX};

/// Shortest reference-model id.
pub const REFERENCE_ID_CHARS_MIN: usize = 3;
/// Traits a reference model has at most.
pub const TRAITS_MAX: usize = 16;
/// Longest trait name (`age_range`).
pub const TRAIT_NAME_CHARS_MAX: usize = 40;
/// Longest trait value.
pub const TRAIT_VALUE_CHARS_MAX: usize = 200;
/// Complexity factor bounds, thousandths (1000 = 1.0): model creation costs grow with it.
pub const COMPLEXITY_MILLI_MIN: i64 = 100;
pub const COMPLEXITY_MILLI_MAX: i64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Fashion,
    Fitness,
    Beauty,
    Lifestyle,
    Business,
}

impl Category {
    pub const ALL: [Category; 5] = [Category::Fashion, Category::Fitness, Category::Beauty, Category::Lifestyle, Category::Business];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Fashion => "fashion",
            Category::Fitness => "fitness",
            Category::Beauty => "beauty",
            Category::Lifestyle => "lifestyle",
            Category::Business => "business",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown category {0:?} (expected fashion, fitness, beauty, lifestyle or business)")]
pub struct UnknownCategory(pub String);

impl FromStr for Category {
    type Err = UnknownCategory;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Category::ALL.into_iter().find(|c| c.as_str() == text).ok_or_else(|| UnknownCategory(text.to_string()))
    }
}

/// A reference model's id: a slug of lower-case letters, digits and single hyphens,
/// 3 to [`REFERENCE_MODEL_ID_CHARS_MAX`] characters (`fashion-editorial-01`). It names
/// the model's objects in the store too, so it holds only safe characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReferenceId(String);

impl ReferenceId {
    pub fn parse(text: &str) -> Result<Self, ReferenceError> {
        let text = text.trim();
        let chars = text.chars().count();
        let slug = text.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !text.starts_with('-')
            && !text.ends_with('-')
            && !text.contains("--");
        if !(REFERENCE_ID_CHARS_MIN..=REFERENCE_MODEL_ID_CHARS_MAX).contains(&chars) || !slug {
            return Err(ReferenceError::InvalidId(format!(
                "must be {REFERENCE_ID_CHARS_MIN} to {REFERENCE_MODEL_ID_CHARS_MAX} lower-case letters, digits and single hyphens (e.g. fashion-editorial-02)"
            )));
        }
        Ok(Self(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ReferenceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A reference model's traits (`age_range: 25-34`, `lighting: golden hour`, …): at most
/// [`TRAITS_MAX`], each name a short lower-case word (`a-z`, digits, `_`), each value
/// text of at most [`TRAIT_VALUE_CHARS_MAX`] characters under the text rule. They tell a
/// trainer what the model looks like.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Traits(BTreeMap<String, String>);

impl Traits {
    /// Traits from (name, value) pairs; names are lower-cased, spaces become `_`; a
    /// name given twice is refused.
    pub fn parse<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Result<Self, ReferenceError> {
        let mut traits = BTreeMap::new();
        for (name, value) in pairs {
            let name = name.trim().to_lowercase().replace(' ', "_");
            let name_ok = !name.is_empty()
                && name.chars().count() <= TRAIT_NAME_CHARS_MAX
                && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !name_ok {
                return Err(ReferenceError::InvalidTraits(format!(
                    "trait name {name:?} must be 1 to {TRAIT_NAME_CHARS_MAX} letters, digits or underscores"
                )));
            }
            let value = value.trim();
            if value.is_empty() {
                return Err(ReferenceError::InvalidTraits(format!("trait {name} has no value")));
            }
            text::check(value, TRAIT_VALUE_CHARS_MAX).map_err(|e| ReferenceError::InvalidTraits(format!("trait {name} {e}")))?;
            if traits.insert(name.clone(), value.to_string()).is_some() {
                return Err(ReferenceError::InvalidTraits(format!("trait {name} is given twice")));
            }
            if traits.len() > TRAITS_MAX {
                return Err(ReferenceError::InvalidTraits(format!("at most {TRAITS_MAX} traits")));
            }
        }
        Ok(Self(traits))
    }

    /// Traits from text, one `name: value` a line (blank lines skipped): the console's form.
    pub fn parse_lines(text: &str) -> Result<Self, ReferenceError> {
        let mut pairs = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| ReferenceError::InvalidTraits(format!("{line:?} is not `name: value`")))?;
            pairs.push((name.to_string(), value.to_string()));
            if pairs.len() > TRAITS_MAX {
                return Err(ReferenceError::InvalidTraits(format!("at most {TRAITS_MAX} traits")));
            }
        }
        Self::parse(pairs)
    }

    pub fn into_map(self) -> BTreeMap<String, String> {
        self.0
    }
}

/// An image stored as a reference model's preview (the object store holds the bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preview {
    pub key: String,
    pub content_type: String,
    pub bytes: u64,
    pub sha256: String,
}

/// A new reference model, its fields checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceSpec {
    pub id: ReferenceId,
    pub name: ModelName,
    pub description: Option<Description>,
    pub category: Category,
    pub traits: Traits,
    pub complexity_factor_milli: i64,
}

/// A new reference model as a door received it.
#[derive(Debug, Clone, Default)]
pub struct NewReference {
    pub id: String,
    pub name: String,
    /// Empty: none.
    pub description: String,
    pub category: String,
    pub traits: Vec<(String, String)>,
    pub complexity_factor_milli: i64,
}

fn text_field<T>(field: &'static str, parsed: Result<T, TextError>) -> Result<T, ReferenceError> {
    parsed.map_err(|reason| ReferenceError::InvalidText { field, reason })
}

/// A description: empty text is none.
fn description(text: &str) -> Result<Option<Description>, ReferenceError> {
    if text.trim().is_empty() && text::refused_char(text).is_none() {
        return Ok(None);
    }
    text_field("description", Description::parse(text)).map(Some)
}

impl ReferenceSpec {
    /// Checks every field: the id's slug rule, the text rule on name and description,
    /// the category, the traits and the complexity bounds.
    pub fn parse(raw: NewReference) -> Result<Self, ReferenceError> {
        let id = ReferenceId::parse(&raw.id)?;
        let name = text_field("name", ModelName::parse(&raw.name))?;
        let description = description(&raw.description)?;
        let category = raw.category.trim().parse::<Category>().map_err(ReferenceError::InvalidCategory)?;
        let traits = Traits::parse(raw.traits)?;
        if !(COMPLEXITY_MILLI_MIN..=COMPLEXITY_MILLI_MAX).contains(&raw.complexity_factor_milli) {
            return Err(ReferenceError::ComplexityOutOfRange { milli: raw.complexity_factor_milli });
        }
        Ok(Self { id, name, description, category, traits, complexity_factor_milli: raw.complexity_factor_milli })
    }
}

/// What an edit changes (`None`: left as it is).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReferenceChanges {
    pub name: Option<ModelName>,
    /// `Some(None)`: the description is cleared.
    pub description: Option<Option<Description>>,
    pub traits: Option<Traits>,
}

/// An edit as a door received it.
#[derive(Debug, Clone, Default)]
pub struct ReferenceEdit {
    pub name: Option<String>,
    /// Empty text clears the description.
    pub description: Option<String>,
    pub traits: Option<Vec<(String, String)>>,
}

impl ReferenceChanges {
    pub fn parse(raw: ReferenceEdit) -> Result<Self, ReferenceError> {
        Ok(Self {
            name: raw.name.as_deref().map(|n| text_field("name", ModelName::parse(n))).transpose()?,
            description: raw.description.as_deref().map(description).transpose()?,
            traits: raw.traits.map(Traits::parse).transpose()?,
        })
    }
}

/// What the catalog lists for an id before the command (read from the catalog; a seeded
/// model has no events).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listed {
    Absent,
    Active,
    Retired,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogCommand {
    Add { spec: ReferenceSpec, preview: Option<Preview>, listed: Listed, act: OperatorAct, now: DateTime<Utc> },
    Edit { changes: ReferenceChanges, preview: Option<Preview>, listed: Listed, act: OperatorAct, now: DateTime<Utc> },
    Retire { listed: Listed, act: OperatorAct, now: DateTime<Utc> },
    Restore { listed: Listed, act: OperatorAct, now: DateTime<Utc> },
}

/// Each carries who did it and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum CatalogEvent {
    ReferenceModelAdded {
        reference_id: String,
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        category: Category,
        characteristics: BTreeMap<String, String>,
        complexity_factor_milli: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        preview: Option<Preview>,
        act: OperatorAct,
        occurred_at: DateTime<Utc>,
    },
    ReferenceModelEdited {
        reference_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// The new description (`""`: cleared).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        characteristics: Option<BTreeMap<String, String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        preview: Option<Preview>,
        act: OperatorAct,
        occurred_at: DateTime<Utc>,
    },
    ReferenceModelRetired { reference_id: String, act: OperatorAct, occurred_at: DateTime<Utc> },
    ReferenceModelRestored { reference_id: String, act: OperatorAct, occurred_at: DateTime<Utc> },
}

impl CatalogEvent {
    /// The act every catalog event carries.
    pub fn act(&self) -> &OperatorAct {
        match self {
            CatalogEvent::ReferenceModelAdded { act, .. }
            | CatalogEvent::ReferenceModelEdited { act, .. }
            | CatalogEvent::ReferenceModelRetired { act, .. }
            | CatalogEvent::ReferenceModelRestored { act, .. } => act,
        }
    }

    /// `add_reference` …: the action's name as the audit shows it.
    pub fn action(&self) -> &'static str {
        match self {
            CatalogEvent::ReferenceModelAdded { .. } => "add_reference",
            CatalogEvent::ReferenceModelEdited { .. } => "edit_reference",
            CatalogEvent::ReferenceModelRetired { .. } => "retire_reference",
            CatalogEvent::ReferenceModelRestored { .. } => "restore_reference",
        }
    }
}

impl DomainEvent for CatalogEvent {
    fn event_type(&self) -> String {
        match self {
            CatalogEvent::ReferenceModelAdded { .. } => "ReferenceModelAdded",
            CatalogEvent::ReferenceModelEdited { .. } => "ReferenceModelEdited",
            CatalogEvent::ReferenceModelRetired { .. } => "ReferenceModelRetired",
            CatalogEvent::ReferenceModelRestored { .. } => "ReferenceModelRestored",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("reference model id {0}")]
    InvalidId(String),
    #[error("{field} {reason}")]
    InvalidText { field: &'static str, reason: TextError },
    #[error(transparent)]
    InvalidCategory(UnknownCategory),
    #[error("{0}")]
    InvalidTraits(String),
    #[error("complexity factor {milli} is outside {COMPLEXITY_MILLI_MIN} to {COMPLEXITY_MILLI_MAX} thousandths")]
    ComplexityOutOfRange { milli: i64 },
    #[error("a reference model with this id exists")]
    AlreadyExists,
    #[error("no such reference model")]
    NotFound,
    #[error("the reference model is retired: restore it first")]
    Retired,
    #[error("nothing to change")]
    NothingToChange,
}

/// One reference model's stream. `active` is `None` until an event of the stream says
/// (a seeded model's listing tells until then).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogEntry {
    pub reference_id: Option<String>,
    pub active: Option<bool>,
}

impl CatalogEntry {
    fn exists(&self, listed: Listed) -> bool {
        self.active.is_some() || listed != Listed::Absent
    }

    fn active(&self, listed: Listed) -> bool {
        self.active.unwrap_or(listed == Listed::Active)
    }

    /// The events `command` records on the stream of reference model `id`.
    pub fn decide(&self, id: &str, command: CatalogCommand) -> Result<Vec<CatalogEvent>, ReferenceError> {
        let reference_id = id.to_string();
        match command {
            CatalogCommand::Add { spec, preview, listed, act, now } => {
                if self.exists(listed) {
                    return Err(ReferenceError::AlreadyExists);
                }
                Ok(vec![CatalogEvent::ReferenceModelAdded {
                    reference_id: spec.id.as_str().to_string(),
                    name: spec.name.into_string(),
                    description: spec.description.map(Description::into_string),
                    category: spec.category,
                    characteristics: spec.traits.into_map(),
                    complexity_factor_milli: spec.complexity_factor_milli,
                    preview,
                    act,
                    occurred_at: now,
                }])
            }
            CatalogCommand::Edit { changes, preview, listed, act, now } => {
                if !self.exists(listed) {
                    return Err(ReferenceError::NotFound);
                }
                if !self.active(listed) {
                    return Err(ReferenceError::Retired);
                }
                let ReferenceChanges { name, description, traits } = changes;
                if name.is_none() && description.is_none() && traits.is_none() && preview.is_none() {
                    return Err(ReferenceError::NothingToChange);
                }
                Ok(vec![CatalogEvent::ReferenceModelEdited {
                    reference_id,
                    name: name.map(ModelName::into_string),
                    description: description.map(|d| d.map(Description::into_string).unwrap_or_default()),
                    characteristics: traits.map(Traits::into_map),
                    preview,
                    act,
                    occurred_at: now,
                }])
            }
            CatalogCommand::Retire { listed, act, now } => match (self.exists(listed), self.active(listed)) {
                (false, _) => Err(ReferenceError::NotFound),
                (true, true) => Ok(vec![CatalogEvent::ReferenceModelRetired { reference_id, act, occurred_at: now }]),
                // Retiring a retired model records nothing.
                (true, false) => Ok(Vec::new()),
            },
            CatalogCommand::Restore { listed, act, now } => match (self.exists(listed), self.active(listed)) {
                (false, _) => Err(ReferenceError::NotFound),
                (true, false) => Ok(vec![CatalogEvent::ReferenceModelRestored { reference_id, act, occurred_at: now }]),
                (true, true) => Ok(Vec::new()),
            },
        }
    }
}

impl Aggregate for CatalogEntry {
    const TYPE: &'static str = "CatalogEntry";
    type Command = (String, CatalogCommand);
    type Event = CatalogEvent;
    type Error = ReferenceError;
    type Services = ();

    async fn handle(&mut self, (id, command): (String, CatalogCommand), _: &(), sink: &EventSink<Self>) -> Result<(), ReferenceError> {
        for event in self.decide(&id, command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: CatalogEvent) {
        match event {
            CatalogEvent::ReferenceModelAdded { reference_id, .. } | CatalogEvent::ReferenceModelRestored { reference_id, .. } => {
                self.reference_id = Some(reference_id);
                self.active = Some(true);
            }
            CatalogEvent::ReferenceModelRetired { reference_id, .. } => {
                self.reference_id = Some(reference_id);
                self.active = Some(false);
            }
            CatalogEvent::ReferenceModelEdited { reference_id, .. } => {
                self.reference_id = Some(reference_id);
                // An edit of a seeded model: it was active (edits of retired ones are refused).
                self.active.get_or_insert(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OperatorId;

    fn act() -> OperatorAct {
        OperatorAct { operator_id: OperatorId::new(uuid::Uuid::from_u128(3)), operator: "alice".into(), reason: Some("new line".into()) }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("valid time")
    }

    fn raw() -> NewReference {
        NewReference {
            id: "fashion-rain-01".into(),
            name: "Ines · Rain Editorial".into(),
            description: "A wet-look editorial in city rain".into(),
            category: "fashion".into(),
            traits: vec![("Age range".into(), "25-34".into()), ("lighting".into(), "overcast".into())],
            complexity_factor_milli: 1_500,
        }
    }

    #[test]
    fn a_new_reference_is_checked_field_by_field() {
        let spec = ReferenceSpec::parse(raw()).expect("valid");
        assert_eq!(spec.traits.clone().into_map().keys().cloned().collect::<Vec<_>>(), ["age_range", "lighting"]);
        type Breaks = fn(&mut NewReference);
        let cases: [(Breaks, &str); 9] = [
            (|r| r.id = "Fashion Rain".into(), "reference model id"),
            (|r| r.id = "ab".into(), "reference model id"),
            (|r| r.id = "a--b".into(), "reference model id"),
            (|r| r.name = " ".into(), "name must be"),
            (|r| r.name = "a\u{0}b".into(), "name contains"),
            (|r| r.description = "x".repeat(crate::text::DESCRIPTION_CHARS_MAX + 1), "description is"),
            (|r| r.category = "sports".into(), "unknown category"),
            (|r| r.traits.push(("lighting".into(), "again".into())), "given twice"),
            (|r| r.complexity_factor_milli = 0, "complexity factor"),
        ];
        for (breaks, says) in cases {
            let mut broken = raw();
            breaks(&mut broken);
            let error = ReferenceSpec::parse(broken).expect_err(says).to_string();
            assert!(error.starts_with(says) || error.contains(says), "{error:?} should say {says:?}");
        }
        assert_eq!(ReferenceSpec::parse(NewReference { description: "  ".into(), ..raw() }).expect("valid").description, None);
        let lines = Traits::parse_lines("style: rain\n\nmood : calm").expect("lines");
        assert_eq!(lines.into_map().get("mood").map(String::as_str), Some("calm"));
        assert!(Traits::parse_lines("no colon here").is_err());
    }

    #[test]
    fn added_edited_retired_and_restored_once_each() {
        let spec = ReferenceSpec::parse(raw()).expect("valid");
        let entry = CatalogEntry::default();
        let add = |listed| CatalogCommand::Add { spec: spec.clone(), preview: None, listed, act: act(), now: now() };
        assert_eq!(entry.decide("fashion-rain-01", add(Listed::Absent)).map(|e| e.len()), Ok(1));
        assert_eq!(entry.decide("fashion-rain-01", add(Listed::Active)), Err(ReferenceError::AlreadyExists));

        let changes = ReferenceChanges::parse(ReferenceEdit { name: Some("Ines · Storm".into()), ..ReferenceEdit::default() }).expect("valid");
        let edit = |changes: ReferenceChanges, listed| CatalogCommand::Edit { changes, preview: None, listed, act: act(), now: now() };
        // A seeded model (no stream yet) may be edited; an unknown one is not found.
        assert_eq!(entry.decide("seeded", edit(changes.clone(), Listed::Active)).map(|e| e.len()), Ok(1));
        assert_eq!(entry.decide("nobody", edit(changes.clone(), Listed::Absent)), Err(ReferenceError::NotFound));
        assert_eq!(entry.decide("seeded", edit(ReferenceChanges::default(), Listed::Active)), Err(ReferenceError::NothingToChange));

        let retire = |listed| CatalogCommand::Retire { listed, act: act(), now: now() };
        let retired = entry.decide("seeded", retire(Listed::Active)).expect("retired");
        let mut after = CatalogEntry::default();
        retired.into_iter().for_each(|e| after.apply(e));
        // The stream now decides, whatever the listing says.
        assert_eq!(after.decide("seeded", retire(Listed::Active)), Ok(Vec::new()), "retired once");
        assert_eq!(after.decide("seeded", edit(changes, Listed::Active)), Err(ReferenceError::Retired));
        let restore = CatalogCommand::Restore { listed: Listed::Retired, act: act(), now: now() };
        assert_eq!(after.decide("seeded", restore).map(|e| e.len()), Ok(1));
    }
}
