//! Stored formats: event payloads, event type/version, and state snapshots.

use cqrs_es::{Aggregate, DomainEvent};
use domain::{TeamCredits, TeamCreditsEvent as E};

use crate::support::*;

fn sample_history() -> Vec<E> {
    vec![
        opened(),
        granted(1, 100, None),
        granted(2, 50, Some(60)),
        reserved(1, 70, vec![alloc(2, 50), alloc(1, 20)]),
        refunded(1, 70, 3),
    ]
}

#[test]
fn aggregate_type_is_team_credits() {
    assert_eq!(TeamCredits::TYPE, "TeamCredits");
}

#[test]
fn events_are_tagged_by_their_type_and_round_trip() {
    for event in sample_history() {
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], event.event_type());
        assert_eq!(event.event_version(), "1");
        assert!(json["occurred_at"].is_string());
        assert_eq!(serde_json::from_value::<E>(json).unwrap(), event);
    }
}

#[test]
fn reservation_payload_is_readable() {
    let json = serde_json::to_value(reserved(1, 70, vec![alloc(2, 50), alloc(1, 20)])).unwrap();
    assert_eq!(json["operation"], "image_generation");
    assert_eq!(json["amount"], 70);
    assert_eq!(json["allocations"][0]["amount"], 50);
    assert_eq!(json["allocations"][0]["grant_id"], grant_id(2).to_string());
}

#[test]
fn snapshots_round_trip_and_are_deterministic() {
    let credits = state(&sample_history());
    let snapshot = serde_json::to_string(&credits).unwrap();
    let restored: TeamCredits = serde_json::from_str(&snapshot).unwrap();
    assert_eq!(restored, credits);
    assert_eq!(serde_json::to_string(&restored).unwrap(), snapshot);
}
