//! The effective price table: the node's `ai.prices` overlaid with the prices stored through the
//! admin API.
//!
//! A stored price replaces the file's price of the same `provider/model` as a whole, so an
//! unset cache or reasoning price in the stored spec falls back to the stored input or output
//! price, not to the file's. Deleting the stored price brings the file's price back.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use portcullis_config::PriceSpec;
use serde::Serialize;

use crate::usage::Price;

/// The origin of an effective price.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PriceSource {
    /// The node's configuration file, `ai.prices`.
    File,
    /// The store, written through the admin API.
    Store,
}

/// One entry of the effective price table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EffectivePrice {
    #[serde(flatten)]
    pub spec: PriceSpec,
    pub source: PriceSource,
}

/// Returns the effective price table ordered by model: every file price whose model has no
/// stored price, and every stored price.
pub fn effective_prices(file: &[PriceSpec], stored: &[PriceSpec]) -> Vec<EffectivePrice> {
    let mut table = BTreeMap::new();
    for spec in file {
        table.insert(spec.model.as_str(), (spec, PriceSource::File));
    }
    for spec in stored {
        table.insert(spec.model.as_str(), (spec, PriceSource::Store));
    }
    table
        .into_values()
        .map(|(spec, source)| EffectivePrice {
            spec: spec.clone(),
            source,
        })
        .collect()
}

/// The prices that the data plane reads, swapped as a whole when the stored prices change.
pub(crate) struct PriceTable {
    file: Vec<PriceSpec>,
    current: ArcSwap<HashMap<String, Price>>,
}

impl PriceTable {
    /// Creates the table with the file's prices only.
    pub(crate) fn new(file: &[PriceSpec]) -> PriceTable {
        PriceTable {
            file: file.to_vec(),
            current: ArcSwap::from_pointee(compile(file, &[])),
        }
    }

    /// Replaces the stored prices laid over the file's.
    pub(crate) fn set_stored(&self, stored: &[PriceSpec]) {
        self.current.store(Arc::new(compile(&self.file, stored)));
    }

    /// Returns the current table. A caller that prices several things holds on to one table,
    /// so a change in between does not mix two tables.
    pub(crate) fn load(&self) -> Arc<HashMap<String, Price>> {
        self.current.load_full()
    }
}

fn compile(file: &[PriceSpec], stored: &[PriceSpec]) -> HashMap<String, Price> {
    effective_prices(file, stored)
        .into_iter()
        .map(|entry| (entry.spec.model.clone(), Price::from_spec(&entry.spec)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(model: &str, input: f64, output: f64) -> PriceSpec {
        PriceSpec {
            model: model.into(),
            input_per_million: input,
            output_per_million: output,
            cache_read_per_million: None,
            cache_write_per_million: None,
            reasoning_per_million: None,
        }
    }

    #[test]
    fn stored_price_replaces_file_price() {
        let mut file_price = spec("p/a", 1.0, 2.0);
        file_price.cache_read_per_million = Some(0.1);
        let file = [file_price, spec("p/b", 3.0, 4.0)];
        let stored = [spec("p/a", 5.0, 6.0), spec("p/c", 7.0, 8.0)];
        let table = effective_prices(&file, &stored);
        let models: Vec<(&str, PriceSource)> = table
            .iter()
            .map(|entry| (entry.spec.model.as_str(), entry.source))
            .collect();
        assert_eq!(
            models,
            [
                ("p/a", PriceSource::Store),
                ("p/b", PriceSource::File),
                ("p/c", PriceSource::Store),
            ]
        );
        assert_eq!(
            table[0].spec, stored[0],
            "the stored spec replaces the file's whole"
        );
    }

    #[test]
    fn price_table_swaps_stored_prices() {
        let table = PriceTable::new(&[spec("p/a", 1.0, 2.0)]);
        let usage = crate::usage::Usage {
            input: Some(1_000_000),
            ..Default::default()
        };
        assert_eq!(table.load()["p/a"].cost(&usage), 1.0);

        table.set_stored(&[spec("p/a", 10.0, 2.0), spec("p/b", 3.0, 4.0)]);
        assert_eq!(table.load()["p/a"].cost(&usage), 10.0);
        assert!(table.load().contains_key("p/b"));

        table.set_stored(&[]);
        assert_eq!(table.load()["p/a"].cost(&usage), 1.0);
        assert!(!table.load().contains_key("p/b"));
    }
}
