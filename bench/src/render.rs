//! `kiln-bench render`: the local provider's renderer alone, one thread: what one image of
//! the lifecycle benchmark costs before storing it. Seeds differ per render (no cache can
//! help), and a digest over every PNG is printed, so two builds can be checked to render
//! the same bytes.

use std::time::Instant;

use infrastructure::provider::render::{parse_resolution, render_png, seed_of};
use sha2::{Digest, Sha256};

#[derive(clap::Args, Debug, Clone)]
pub struct RenderArgs {
    #[arg(long, default_value_t = 300)]
    pub renders: usize,
    #[arg(long, default_value = "512x512")]
    pub resolution: String,
    /// Also write every PNG to this directory (`0.png`, `1.png`, …), to look at them.
    #[arg(long)]
    pub write_to: Option<std::path::PathBuf>,
}

/// `renders` PNGs of `resolution` rendered on this thread, and the time per render and
/// per SHA-256 of one (the worker hashes every output it stores: its `sha256` in the
/// job's results).
pub struct Rendered {
    pub pngs: Vec<Vec<u8>>,
    pub render_ms: f64,
    pub hash_ms: f64,
}

pub fn render_many(renders: usize, resolution: &str) -> anyhow::Result<Rendered> {
    let (width, height) = parse_resolution(resolution).ok_or_else(|| anyhow::anyhow!("bad resolution {resolution:?}"))?;
    anyhow::ensure!(renders > 0, "--renders must be positive");
    let seeds: Vec<[u8; 32]> = (0..renders).map(|i| seed_of(&[b"kiln-bench render", i.to_string().as_bytes()])).collect();
    let started = Instant::now();
    let pngs = seeds.iter().map(|seed| render_png(seed, width, height)).collect::<Result<Vec<_>, _>>()?;
    let elapsed = started.elapsed();
    let hashing = Instant::now();
    for png in &pngs {
        std::hint::black_box(Sha256::digest(png));
    }
    let hashed = hashing.elapsed();
    let per = |d: std::time::Duration| d.as_secs_f64() * 1000.0 / renders as f64;
    Ok(Rendered { render_ms: per(elapsed), hash_ms: per(hashed), pngs })
}

pub fn run(args: &RenderArgs) -> anyhow::Result<()> {
    let Rendered { pngs, render_ms, hash_ms } = render_many(args.renders, &args.resolution)?;
    let bytes: usize = pngs.iter().map(Vec::len).sum();
    let digest = pngs.iter().fold(Sha256::new(), |digest, png| digest.chain_update(png));
    println!(
        "{} renders of {}: {render_ms:.3} ms per render, {} bytes per PNG on average, SHA-256 of a PNG {hash_ms:.3} ms; digest {}",
        args.renders,
        args.resolution,
        bytes / args.renders,
        hex::encode(digest.finalize())
    );
    if let Some(dir) = &args.write_to {
        std::fs::create_dir_all(dir)?;
        for (index, png) in pngs.iter().enumerate() {
            std::fs::write(dir.join(format!("{index}.png")), png)?;
        }
    }
    Ok(())
}
