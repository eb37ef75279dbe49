//! The frame every console page is drawn in: title, the console's navigation, the
//! signed-in operator and their role, and the CSRF token its forms carry.

use super::session::OpsSession;

pub struct OpsLayout {
    pub title: String,
    /// Which navigation entry is the current page.
    pub nav: &'static str,
    pub signed_in: bool,
    /// "alice · admin"
    pub operator: String,
    /// Whether the operator may act (admins): viewers get no action forms.
    pub can_act: bool,
    pub csrf: String,
}

impl OpsLayout {
    pub fn signed_out(title: &str, csrf: &str) -> Self {
        Self { title: title.to_string(), nav: "", signed_in: false, operator: String::new(), can_act: false, csrf: csrf.to_string() }
    }

    pub fn new(session: &OpsSession, title: &str, nav: &'static str) -> Self {
        let operator = &session.operator;
        Self {
            title: title.to_string(),
            nav,
            signed_in: true,
            operator: format!("{} · {}", operator.name, operator.role.as_str()),
            can_act: operator.role.can_write(),
            csrf: session.csrf.clone(),
        }
    }
}
