// `sqlx::migrate!` embeds the migration files at compile time; without this a new or
// edited migration would not rebuild the crate (the sqlx documentation's build script).
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
