//! `coffer cat`: repository objects as JSON, for debugging and scripting.

use anyhow::{bail, Context, Result};
use coffer_core::format::{BlobId, Id, IndexFile, PackEntry, Place};
use coffer_core::walk::{find_path, Found};
use serde_json::json;

use super::{open, print_json};
use crate::cli::{CatArgs, Global};

fn entries_json(es: &[PackEntry]) -> serde_json::Value {
    es.iter()
        .map(|e| {
            let place = match e.place {
                Place::Own => "own",
                Place::Bundle => "bundle",
                Place::Member => "in_bundle",
            };
            json!({"type": e.kind, "place": place, "id": e.id.to_hex(), "offset": e.offset, "length": e.length, "raw_length": e.raw_length})
        })
        .collect()
}

fn index_json(f: &IndexFile) -> serde_json::Value {
    json!({
        "supersedes": f.supersedes.iter().map(|i| i.to_hex()).collect::<Vec<_>>(),
        "packs": f.packs.iter().map(|p| json!({"id": p.id.to_hex(), "blobs": entries_json(&p.entries)})).collect::<Vec<_>>(),
    })
}

pub fn run(g: &Global, a: CatArgs) -> Result<u8> {
    let repo = open(g)?;
    let need_id = || a.id.clone().context("this object kind needs an id");
    match a.kind.as_str() {
        "config" => print_json(repo.config())?,
        "snapshot" => {
            let (id, s) = repo.find_snapshot(&need_id()?)?;
            let mut v = serde_json::to_value(&s)?;
            v["id"] = json!(id.to_hex());
            print_json(&v)?;
        }
        "key" => {
            let kid = repo.find_key(&need_id()?)?;
            let keys = repo.list_keys()?;
            let (_, kf) = keys.iter().find(|(i, _)| *i == kid).context("key vanished")?;
            print_json(kf)?;
        }
        "index" => {
            let f = repo.load_index_file(&need_id()?)?;
            print_json(&index_json(&f))?;
        }
        "pack" => {
            let id = need_id()?;
            let repo = repo.load_index()?;
            let pid = coffer_core::format::PackId(Id::from_hex(&id)?);
            print_json(&json!({"id": id, "blobs": entries_json(&repo.read_pack_header(&pid)?)}))?;
        }
        "tree" => {
            // `cat tree SNAPSHOT[:PATH]` or `cat tree TREE-ID`
            let spec = need_id()?;
            let repo = repo.load_index()?;
            let tree_id = match Id::from_hex(&spec) {
                Ok(id) if repo.index().contains(&BlobId(id)) => BlobId(id),
                _ => {
                    let (s, p) = spec.split_once(':').unwrap_or((spec.as_str(), "/"));
                    let (_, snap) = repo.find_snapshot(s)?;
                    match find_path(&repo, snap.tree, p)? {
                        Found::Root(id) => id,
                        Found::Node(n) => n.subtree.with_context(|| format!("{p} is not a directory"))?,
                    }
                }
            };
            let mut v = serde_json::to_value(repo.load_tree(&tree_id)?)?;
            v["id"] = json!(tree_id.to_hex());
            print_json(&v)?;
        }
        other => bail!("unknown object kind {other:?}: use config, snapshot, tree, index, key or pack"),
    }
    Ok(0)
}
