//! `coffer copy --from-repo SRC [SNAPSHOT...]`: snapshots into the repository of `-r`.

use std::io::Write;

use anyhow::{Context, Result};
use coffer_core::copy::copy_snapshots;
use coffer_core::Repository;

use crate::cli::{CopyArgs, Global};
use crate::cmd::{open_leased, outln, print_json};
use crate::password::password_from;
use crate::ui::{bytes, CliProgress};

pub fn run(g: &Global, a: CopyArgs) -> Result<u8> {
    let rest = coffer_backends::RestOptions {
        cacert: a.from_cacert.clone(),
        token_file: a.from_token_file.clone(),
        token_var: Some("COFFER_FROM_TOKEN"),
    };
    // (--limit-download paces what is read from the source, which is what a copy reads)
    let src_backend = crate::cmd::cached(
        g,
        crate::cmd::limit_reads(
            g,
            coffer_backends::open_with(&a.from_repo, &rest, None).context("the source repository")?,
        ),
    );
    if !src_backend.exists()? {
        return Err(coffer_core::Error::NoRepository {
            location: src_backend.location(),
        })
        .context("the source repository (--from-repo)");
    }
    let pw = password_from(
        "COFFER_FROM_PASSWORD",
        a.from_password_file.as_deref(),
        a.from_password_command.as_deref(),
        "enter password for the source repository: ",
    )?;
    let mut src = Repository::open(src_backend, &pw).context("the source repository (--from-repo)")?;
    src.set_index_spill(Some(super::index_spill(g)));
    let src = src.load_index()?;
    let mut dst = open_leased(g, "backup")?;
    let mut wanted = Vec::new();
    if a.snapshots.is_empty() {
        let (list, unreadable) = src.list_snapshots_readable()?;
        for w in unreadable {
            eprintln!("coffer: warning: source {w}");
        }
        wanted.extend(list.into_iter().filter(|(_, s)| a.filter.matches(s)));
    } else {
        for spec in &a.snapshots {
            wanted.push(src.find_snapshot(spec)?);
        }
    }
    let progress = CliProgress::new(!g.quiet && !g.json, "copied");
    let r = copy_snapshots(&src, &mut dst, &wanted, &progress);
    progress.finish();
    let r = r?;
    if g.json {
        print_json(&r)?;
    } else if !g.quiet {
        for (from, to) in &r.copied {
            outln!("snapshot {} copied as {}", from.short(), to.short())?;
        }
        outln!(
            "{} snapshot(s) copied, {} already there; {} new blobs, {} new data, {} stored",
            r.copied.len(),
            r.skipped.len(),
            r.blobs_new,
            bytes(r.bytes_new_raw),
            bytes(r.bytes_stored)
        )?;
    }
    Ok(0)
}
