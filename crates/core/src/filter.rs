//! Glob patterns for `--exclude` and `--include`.
//!
//! A pattern without `/` matches a name at any depth (`*.log`); a pattern with `/` matches the
//! whole absolute path (`/var/www/*/cache`, `/home/**/.cache`). `*` does not cross `/`, `**` does.

use std::path::Path;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct PathMatcher {
    names: GlobSet,
    paths: GlobSet,
    empty: bool,
}

impl PathMatcher {
    pub fn new(patterns: &[String]) -> Result<Self> {
        let mut names = GlobSetBuilder::new();
        let mut paths = GlobSetBuilder::new();
        for p in patterns {
            let p = if p.len() > 1 {
                p.trim_end_matches('/')
            } else {
                p.as_str()
            };
            let glob = GlobBuilder::new(p)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| Error::Invalid(format!("pattern {p:?}: {e}")))?;
            if p.contains('/') {
                paths.add(glob);
            } else {
                names.add(glob);
            }
        }
        let build = |b: GlobSetBuilder| b.build().map_err(|e| Error::Invalid(format!("patterns: {e}")));
        Ok(PathMatcher {
            names: build(names)?,
            paths: build(paths)?,
            empty: patterns.is_empty(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.empty
    }

    pub fn matches(&self, path: &Path) -> bool {
        if self.empty {
            return false; // checked for every entry of a backup: skip globset's setup
        }
        path.file_name().is_some_and(|n| self.names.is_match(n)) || self.paths.is_match(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        let m = PathMatcher::new(&[
            "*.log".into(),
            "/var/www/*/cache".into(),
            "/home/**/.cache/".into(),
        ])
        .unwrap();
        assert!(m.matches(Path::new("/a/b/x.log")));
        assert!(!m.matches(Path::new("/a/b/x.logs")));
        assert!(m.matches(Path::new("/var/www/site/cache")));
        assert!(!m.matches(Path::new("/var/www/a/b/cache")));
        assert!(m.matches(Path::new("/home/u/x/.cache")));
        assert!(PathMatcher::new(&["[".into()]).is_err());
    }
}
