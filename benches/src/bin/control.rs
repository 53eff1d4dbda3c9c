//! Control-plane costs on one core: certificate issuance by the internal CA
//! (`bamf_api::ca::Authority::issue` for session certificates, the hot path: one per
//! connect; CSR generation excluded, the client pays for it) and password verification at
//! the argon2id cost login uses (the ceiling on logins per second per core). Prints a
//! Markdown section; `--record` appends it to RESULTS.md.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bamf_api::ca::Authority;
use bamf_proto::san::Identity;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "control",
    about = "Certificates issued and logins verified per second per core"
)]
struct Cli {
    /// Certificates per run.
    #[arg(long, default_value_t = 2000)]
    count: usize,
    /// Password verifications per run.
    #[arg(long, default_value_t = 50)]
    logins: usize,
    /// Runs; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Append the report to benches/RESULTS.md.
    #[arg(long)]
    record: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let now = time::OffsetDateTime::now_utc();
    let ca = Authority::generate("BAMF bench CA", now).context("generating the CA")?;
    let identity = Identity::Client {
        session: "6f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f".parse()?,
        user: "alice".parse()?,
        resource: "db".parse()?,
        agent: "0123abcd-0000-4000-8000-00000000cafe".parse()?,
        bridge: 0,
    };
    let csrs: Vec<String> = (0..cli.count)
        .map(|_| {
            let key = rcgen::KeyPair::generate()?;
            rcgen::CertificateParams::default()
                .serialize_request(&key)?
                .pem()
        })
        .collect::<Result<_, rcgen::Error>>()?;
    let mut rates = Vec::new();
    for _ in 0..cli.runs.max(1) {
        let started = Instant::now();
        for csr in &csrs {
            ca.issue(csr, &identity, None, Duration::from_secs(60), now)?;
        }
        rates.push(cli.count as f64 / started.elapsed().as_secs_f64());
    }
    let (median, low, high) = summary(&mut rates);
    let hash = bamf_api::auth::hash_password("correct horse battery").context("hashing")?;
    let mut login_rates = Vec::new();
    for _ in 0..cli.runs.max(1) {
        let started = Instant::now();
        for _ in 0..cli.logins {
            anyhow::ensure!(bamf_api::auth::verify_password(
                "correct horse battery",
                Some(&hash)
            ));
        }
        login_rates.push(cli.logins as f64 / started.elapsed().as_secs_f64());
    }
    let (login_median, login_low, login_high) = summary(&mut login_rates);
    let commit = bamf_benches::commit();
    let cpu = bamf_benches::machine();
    let report = format!(
        "\n## Control plane, {}\n\n- commit: {commit}; machine: {cpu}, one thread\n- certificate issuance: `Authority::issue` of a 60 s session certificate from an ECDSA P-256 CSR (parse, signature check, policy, sign), CSR generation excluded; CA key ECDSA P-256 (ring). {} runs of {}: median **{median:.0} certificates/s per core** (range {low:.0}–{high:.0})\n- login: argon2id verification at the login cost ({}), {} runs of {}: median **{login_median:.1} logins/s per core** (range {login_low:.1}–{login_high:.1}); the store and token write add little next to it\n",
        now.date(),
        rates.len(),
        cli.count,
        hash.split('$').nth(3).unwrap_or("default parameters"),
        login_rates.len(),
        cli.logins,
    );
    println!("{report}");
    if cli.record {
        bamf_benches::record(&report).context("writing RESULTS.md")?;
    }
    Ok(())
}

/// Sorts and returns (median, min, max).
fn summary(rates: &mut [f64]) -> (f64, f64, f64) {
    rates.sort_by(f64::total_cmp);
    (rates[rates.len() / 2], rates[0], rates[rates.len() - 1])
}
