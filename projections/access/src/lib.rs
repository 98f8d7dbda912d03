//! Who may do what: members, roles, invitations and API keys, event-sourced.
//!
//! Every change is an event (`kairos.member.invited.v1`, `…member.joined…`, `…member.removed…`,
//! `kairos.role.assigned.v1`, `kairos.api_key.issued.v1`, `…api_key.revoked…`); the [`Access`]
//! projection folds them into `access.members`, `access.invitations` and `access.api_keys`, which
//! the lists read. The [`Directory`] folds the same events in memory: [`commands`] decide against
//! it and append with optimistic concurrency (the API and `kairos admin` both call them), and
//! the API authenticates bearer keys against it. [`allows`] is the permission matrix the API
//! middleware enforces; `kairos admin permissions` prints it.
//!
//! Secrets never leave the caller: keys and invitation tokens are stored, and published, only as
//! HMAC-SHA256 under the server's key secret, and compared in constant time.

mod api;
pub mod commands;
mod directory;
mod keys;
mod projection;
mod views;

pub use api::{AccessApi, AccessModule, MODULE, directory_store};
pub use directory::{Directory, Invite, Key, Member};
pub use kairos_api::{Denied, Permission, Principal, Role, allows};
pub use keys::{KeySecret, generate_key, generate_token, hex, unhex};
pub use projection::{Access, Change};
pub use views::{
    InvitationView, KeyView, MemberView, Page, active_admins, invitations, keys, member, members,
};

/// Projection name, checkpoint key and schema.
pub const NAME: &str = "access";
