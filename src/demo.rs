//! `chronus-gateway demo`: filled in once the dev thoth lands.

pub fn run(_args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    Err("demo not available yet".into())
}
