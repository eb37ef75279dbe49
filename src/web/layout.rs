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
            team: format!("{} · {} plan · {} credits", balance.name, balance.plan, balance.available),
            csrf: session.csrf.clone(),
            manage_keys: session.role.can_manage_keys(),
        }
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
