//! The explorer's views and the similarity metric the heatmaps show: enums that know
//! their own order (next / previous), titles and labels.

use crate::analysis::inspect::PromptAnalysis;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum View {
    Similarity,
    Predictions,
    Generation,
    Metrics,
    Training,
}

impl View {
    pub const ALL: [View; 5] = [View::Similarity, View::Predictions, View::Generation, View::Metrics, View::Training];

    pub fn title(&self) -> &'static str {
        match self {
            View::Similarity => "Similarity",
            View::Predictions => "Predictions",
            View::Generation => "Generation",
            View::Metrics => "Layer metrics",
            View::Training => "Training",
        }
    }

    /// The tab's name where the screen is narrow.
    pub fn short_title(&self) -> &'static str {
        match self {
            View::Similarity => "Similar",
            View::Predictions => "Predict",
            View::Metrics => "Metrics",
            v => v.title(),
        }
    }

    /// Position among the tabs, 0-based.
    pub fn index(&self) -> usize {
        View::ALL.iter().position(|v| v == self).expect("every view is in ALL")
    }

    /// The next tab, wrapping around.
    pub fn next(self) -> Self {
        View::ALL[(self.index() + 1) % View::ALL.len()]
    }

    /// The previous tab, wrapping around.
    pub fn previous(self) -> Self {
        View::ALL[(self.index() + View::ALL.len() - 1) % View::ALL.len()]
    }
}

/// Which layer-similarity matrix the heatmaps show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimMetric {
    CenteredCos,
    RawCos,
    Cka,
}

impl SimMetric {
    pub fn label(&self) -> &'static str {
        match self {
            SimMetric::CenteredCos => "centered COS",
            SimMetric::RawCos => "raw COS",
            SimMetric::Cka => "linear CKA",
        }
    }

    /// The next metric, wrapping around.
    pub fn next(self) -> Self {
        match self {
            SimMetric::CenteredCos => SimMetric::RawCos,
            SimMetric::RawCos => SimMetric::Cka,
            SimMetric::Cka => SimMetric::CenteredCos,
        }
    }

    pub fn matrix<'a>(&self, a: &'a PromptAnalysis) -> &'a [Vec<Option<f64>>] {
        match self {
            SimMetric::CenteredCos => &a.cos,
            SimMetric::RawCos => &a.cos_raw,
            SimMetric::Cka => &a.cka,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_cycle_both_ways() {
        for v in View::ALL {
            assert_eq!(v.next().previous(), v);
        }
        assert_eq!(View::Training.next(), View::Similarity);
        assert_eq!(View::Similarity.previous(), View::Training);
    }
}
