//! Pull (placeholder)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Progress { #[default] Auto, Quiet }
#[derive(Debug, thiserror::Error)]
pub enum PullError {}
