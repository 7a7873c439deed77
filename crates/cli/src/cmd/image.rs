//! `coffer restore SNAPSHOT[:/.images/NAME] --device DEV`: an image written back onto a block
//! device.

use std::io::Write;

use anyhow::{bail, Context, Result};
use coffer_core::format::NodeKind;
use coffer_core::image::{open_device_for_image, write_image, DeviceWrite};
use coffer_core::walk::{find_path, Found};
use serde::Serialize;

use super::{open_indexed, outln, print_json, resolve_snapshot};
use crate::cli::{Global, RestoreArgs};
use crate::ui::{bytes, local_time, CliProgress};

/// What `restore --device --json` prints.
#[derive(Serialize)]
struct Summary<'a> {
    message_type: &'static str,
    snapshot_id: String,
    image: &'a str,
    device: String,
    dry_run: bool,
    device_size: u64,
    #[serde(flatten)]
    written: DeviceWrite,
}

pub fn restore_device(g: &Global, a: &RestoreArgs, dev: &std::path::Path) -> Result<u8> {
    if a.delete || !a.include.is_empty() || !a.exclude.is_empty() || a.overwrite != "always" {
        return Err(coffer_core::Error::Usage(
            "--device writes one image whole: --delete, --include, --exclude and --overwrite do not apply"
                .into(),
        )
        .into());
    }
    let (spec, path) = match a.snapshot.split_once(':') {
        Some((s, p)) => (s.to_string(), Some(p.to_string())),
        None => (a.snapshot.clone(), None),
    };
    let repo = open_indexed(g)?;
    let (id, snap) = resolve_snapshot(&repo, &spec, &a.filter)?;
    // the image named, or the snapshot's only one; only what the snapshot lists as an image
    let usage = |m: String| -> anyhow::Error { coffer_core::Error::Usage(m).into() };
    let path = match (path, snap.images.as_slice()) {
        (Some(p), list) => {
            if !list.iter().any(|i| i.path == p) {
                return Err(usage(format!(
                    "{p}: not an image of snapshot {} (it holds: {}); --device writes images only",
                    id.short(),
                    if list.is_empty() {
                        "none".to_string()
                    } else {
                        list.iter()
                            .map(|i| i.path.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                )));
            }
            p
        }
        (None, [one]) => one.path.clone(),
        (None, []) => {
            return Err(usage(format!(
                "snapshot {} holds no image (`backup --device` or `--stdin` make them)",
                id.short()
            )))
        }
        (None, many) => {
            return Err(usage(format!(
                "snapshot {} holds {} images: name one, e.g. {}:{}",
                id.short(),
                many.len(),
                a.snapshot,
                many[0].path
            )))
        }
    };
    let node = match find_path(&repo, snap.tree, &path)? {
        Found::Node(n) if n.kind == NodeKind::File => n,
        _ => bail!("{path}: not a file in snapshot {}", id.short()),
    };
    if snap.sealed_by_write_only {
        eprintln!(
            "warning: snapshot {} was sealed by a write-only key: what it holds is that key's word",
            id.short()
        );
    }
    let (f, dev_size) = open_device_for_image(dev, node.size, !a.dry_run)?;
    let progress = CliProgress::new(!g.quiet && !g.json && !a.dry_run, "written");
    let written = if a.dry_run {
        DeviceWrite {
            bytes: node.size,
            ..DeviceWrite::default()
        }
    } else {
        let w = write_image(&repo, &node, &f, dev, &progress);
        progress.finish();
        w?
    };
    if g.json {
        print_json(&Summary {
            message_type: "summary",
            snapshot_id: id.to_hex(),
            image: &path,
            device: dev.display().to_string(),
            dry_run: a.dry_run,
            device_size: dev_size,
            written,
        })?;
    } else if !g.quiet {
        let verb = if a.dry_run { "would write" } else { "wrote" };
        outln!(
            "{verb} {path} ({}) of snapshot {} of {} ({}) to {} ({} block device, not mounted)",
            bytes(node.size),
            id.short(),
            snap.hostname,
            local_time(&snap.time),
            dev.display(),
            bytes(dev_size)
        )?;
        if !a.dry_run {
            outln!(
                "data {}, zeroed {} ({})",
                bytes(written.bytes_written),
                bytes(written.bytes_zeroed),
                if written.zeroing.is_empty() {
                    "none"
                } else {
                    &written.zeroing
                }
            )?;
        }
        if dev_size > node.size {
            outln!(
                "the device's last {} were left as they were",
                bytes(dev_size - node.size)
            )?;
        }
    }
    if let Some(e) = &node.error {
        eprintln!("warning: {path}: {e}");
        return Ok(crate::EXIT_INCOMPLETE);
    }
    Ok(0)
}
