//! The reference CPM Conversation Server (sans-IO).

pub mod conference;
pub mod resource_lists;
