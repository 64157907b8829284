//! Built-in catalog of popular models: published `config.json` facts, with their sources, in
//! `catalog.json` beside this file.

use std::sync::LazyLock;

use serde::Deserialize;
use serde_json::Value;

use super::arch::{Architecture, ArchitectureError};

#[derive(Debug, Clone, Deserialize)]
pub struct CatalogEntry {
    pub id: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Where the config values were found.
    pub source: String,
    /// The publisher's parameter count, when found.
    pub published_parameters: Option<u64>,
    #[serde(default)]
    pub published_parameters_source: Option<String>,
    pub config: Value,
}

impl CatalogEntry {
    pub fn architecture(&self) -> Result<Architecture, ArchitectureError> {
        Architecture::from_hf_config(&self.config)
    }

    fn matches(&self, id: &str) -> bool {
        self.id.eq_ignore_ascii_case(id) || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(id))
    }
}

static CATALOG: LazyLock<Result<Vec<CatalogEntry>, String>> = LazyLock::new(|| {
    serde_json::from_str(include_str!("catalog.json"))
        .map_err(|e| format!("built-in catalog.json is malformed: {e}"))
});

/// Every entry; an error only if the embedded file is malformed (a build defect, tested).
pub fn entries() -> Result<&'static [CatalogEntry], String> {
    CATALOG.as_deref().map_err(Clone::clone)
}

/// Look a model up by Hugging Face id or alias, case-insensitively.
pub fn lookup(id: &str) -> Option<&'static CatalogEntry> {
    entries().ok()?.iter().find(|e| e.matches(id))
}
