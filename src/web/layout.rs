//! The frame every page is drawn in: title, navigation, the signed-in team, and the CSRF
//! token its forms carry. Plus the small formatting helpers templates share.

use chrono::{DateTime, Utc};

use super::errors::WebError;
use super::session::Session;
use crate::state::AppState;
use crate::queries::credits::BalanceView;

pub struct Layout {
    pub title: String,
    /// Which navigation entry is the current page.
    pub nav: &'static str,
    pub signed_in: bool,
    /// "Acme · pro · 4880 credits"
    pub team: String,
    pub csrf: String,
    /// Whether the signed-in key may manage the team's keys: the keys page is in the
    /// navigation only then.
    pub manage_keys: bool,
}

impl Layout {
    /// For pages seen without a session (sign-in, errors).
    pub fn bare(title: &str) -> Self {
        Self { title: title.to_string(), nav: "", signed_in: false, team: String::new(), csrf: String::new(), manage_keys: false }
    }

    pub fn signed_out(title: &str, csrf: &str) -> Self {
        Self { csrf: csrf.to_string(), ..Self::bare(title) }
    }

    /// For a signed-in page: names the team and its spendable credits in the header.
    pub async fn load(state: &AppState, session: &Session, title: &str, nav: &'static str) -> Result<Self, WebError> {
        let balance = state.balances.balance(&state.db, session.team_id).await?.ok_or(WebError::SignedOut)?;
        Ok(Self::with_balance(session, &balance, title, nav))
    }

    /// [`load`](Self::load) for a page that read the team's balance itself.
    pub fn with_balance(session: &Session, balance: &BalanceView, title: &str, nav: &'static str) -> Self {
        Self {
            title: title.to_string(),
            nav,
            signed_in: true,
            team: Self::team_summary(balance),
            csrf: session.csrf.clone(),
            manage_keys: session.role.can_manage_keys(),
        }
    }
}

impl Layout {
    /// The header's words for the team: "Acme · pro plan · 4880 credits" (also sent by
    /// the live stream as they change).
    pub fn team_summary(balance: &BalanceView) -> String {
        format!("{} · {} plan · {} credits", balance.name, balance.plan, balance.available)
    }
}

/// An instant as pages show it.
pub fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

pub fn time_opt(at: Option<DateTime<Utc>>) -> String {
    at.map(time).unwrap_or_else(|| "—".to_string())
}

/// Words for stored kinds: `image_generation` → "Image generation".
pub fn kind_label(kind: &str) -> &'static str {
    match kind {
        "model_creation" => "Model creation",
        "model_refinement" => "Model refinement",
        "image_generation" => "Image generation",
        _ => "Job",
    }
}

/// Whether a job status is final (nothing more will happen to it).
pub fn is_final(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled")
}

/// A length of time as pages show it: "0.4 s", "12 s", "3 min 05 s", "2 h 07 min".
pub fn duration(length: chrono::Duration) -> String {
    let millis = length.num_milliseconds().max(0);
    let seconds = millis / 1_000;
    match seconds {
        0..=9 => format!("{:.1} s", millis as f64 / 1_000.0),
        10..=59 => format!("{seconds} s"),
        60..=3_599 => format!("{} min {:02} s", seconds / 60, seconds % 60),
        _ => format!("{} h {:02} min", seconds / 3_600, seconds % 3_600 / 60),
    }
}

pub fn duration_opt(length: Option<chrono::Duration>) -> String {
    length.map(duration).unwrap_or_else(|| "—".to_string())
}

/// The start of `text`, at most `chars_max` characters, "…" when cut.
pub fn shortened(text: &str, chars_max: usize) -> String {
    let text = text.trim();
    if text.chars().count() <= chars_max {
        return text.to_string();
    }
    let cut: String = text.chars().take(chars_max.saturating_sub(1)).collect();
    format!("{}…", cut.trim_end())
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    #[test]
    fn durations_and_shortened_text_read_well() {
        assert_eq!(super::duration(Duration::milliseconds(420)), "0.4 s");
        assert_eq!(super::duration(Duration::seconds(12)), "12 s");
        assert_eq!(super::duration(Duration::seconds(185)), "3 min 05 s");
        assert_eq!(super::duration(Duration::seconds(7_620)), "2 h 07 min");
        assert_eq!(super::duration_opt(None), "—");
        assert_eq!(super::shortened("a short one", 20), "a short one");
        assert_eq!(super::shortened("abcdefghij", 5), "abcd…");
    }
}
