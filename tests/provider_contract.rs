//! One contract for every storage backend, in the style of rclone's fstests: each case in
//! `provider_contract/cases.rs` is a named test, instantiated by `contract!` below for
//! every backend, so a failure reads as `apache::rename_dir_with_contents`.
//!
//! Every test gets a fresh, empty backend (servers and emulators start per test; they
//! start in well under a second) and talks to it through the `Provider` trait only. Where a
//! backend legitimately behaves differently, the difference is written down next to the
//! backend in the `contract!` invocation (an `Expect`), never by letting a case accept
//! several outcomes for everybody.

#[path = "support/drive_emulator.rs"]
mod drive_emulator;
#[path = "support/drive_harness.rs"]
mod drive_harness;
#[path = "support/dropbox_emulator.rs"]
mod dropbox_emulator;
#[path = "support/dropbox_harness.rs"]
mod dropbox_harness;
#[path = "support/emu/mod.rs"]
mod emu;
#[path = "support/graph_emulator.rs"]
mod graph_emulator;
#[path = "support/graph_harness.rs"]
mod graph_harness;
#[path = "support/nextcloud_emulator.rs"]
mod nextcloud_emulator;
#[path = "support/webdav_servers.rs"]
mod webdav_servers;

#[path = "provider_contract/cases.rs"]
mod cases;
#[path = "provider_contract/fixtures.rs"]
mod fixtures;

/// How a backend hands out a listing.
#[derive(Debug, Clone, Copy)]
pub enum Paging {
    /// The provider's stream yields pages of this many entries.
    Stream { page: usize },
    /// The server answers listings this many entries at a time; the provider follows the
    /// page tokens and yields the assembled listing.
    Server { page: usize },
    /// One request, one page (WebDAV's Depth:1 PROPFIND, a local readdir). WebDAV splits
    /// beyond 1000 entries, which `webdav_provider::*::many_entries` covers.
    Single,
}

/// What copying onto an existing file does.
#[derive(Debug, Clone, Copy)]
pub enum CopyOntoFile {
    /// Replaced, like cp.
    Replaces,
    /// Refused: on Drive names are not unique, so a copy would sit next to the file with
    /// the same name; the provider refuses instead of making a duplicate.
    AlreadyExists,
}

/// How copying a directory (the trait copies files) is refused.
#[derive(Debug, Clone, Copy)]
pub enum CopyDirectory {
    IsADirectory,
    /// Drive's files.copy cannot copy folders; the provider says so.
    Unsupported,
}

#[derive(Debug, Clone, Copy)]
pub enum QuotaReport {
    /// An account with this limit: used is what the files take, available the rest.
    Account { total: u64 },
    /// The backing filesystem's statvfs.
    Filesystem,
    /// Nothing known (a server without RFC 4331 quota properties).
    Unknown,
}

#[derive(Debug, Clone, Copy)]
pub enum Feed {
    /// `capabilities().delta` and a working change feed.
    Delta,
    /// No feed, and `capabilities().delta` says so.
    None,
    /// WebDAV: offered until the server refuses sync-collection (RFC 6578) once, then
    /// withdrawn, so changes are found by listing.
    RefusedOnFirstUse,
}

/// What a read pinned to a revision that has since been replaced gives.
#[derive(Debug, Clone, Copy)]
pub enum ReplacedRevisionRead {
    /// PreconditionFailed: the backend keeps only the current content.
    PreconditionFailed,
    /// The old bytes: Drive keeps past revisions and reads them by id, and the trait fails
    /// such a read only when "the remote no longer has it".
    OldContent,
}

#[derive(Debug, Clone, Copy)]
pub struct Expect {
    pub paging: Paging,
    pub replaced_revision_read: ReplacedRevisionRead,
    pub copy_onto_file: CopyOntoFile,
    pub copy_directory: CopyDirectory,
    pub quota: QuotaReport,
    pub feed: Feed,
}

macro_rules! contract {
    (
        cases $cases:tt
        backends { $($(#[$doc:meta])* $backend:ident => $expect:expr;)* }
    ) => {
        $(contract!(@backend $(#[$doc])* $backend, $expect, $cases);)*
    };
    (@backend $(#[$doc:meta])* $backend:ident, $expect:expr, [$($case:ident),* $(,)?]) => {
        $(#[$doc])*
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test]
                async fn $case() {
                    let fx = fixtures::$backend().await;
                    cases::$case(&fx, &$expect).await;
                }
            )*
        }
    };
}

contract! {
    cases [
        list_empty_root,
        list_files_and_dirs,
        list_empty_dir,
        list_pages,
        list_missing_is_not_found,
        list_file_is_not_a_directory,
        stat_file,
        stat_dir,
        stat_missing_is_not_found,
        read_start,
        read_middle,
        read_end,
        read_past_eof,
        read_rest_unbounded,
        read_zero_len,
        read_at_revision,
        read_missing_or_dir,
        upload_new_must_not_exist,
        upload_replace_expected_revision,
        upload_wrong_revision_conflicts,
        upload_must_not_exist_over_existing,
        upload_unconditional_replace,
        upload_empty_file,
        upload_into_missing_dir,
        upload_over_dir_is_a_directory,
        mkdir_new,
        mkdir_existing_already_exists,
        mkdir_missing_parent,
        rename_file,
        rename_dir_with_contents,
        rename_over_file_with_overwrite,
        rename_refuses_without_overwrite,
        rename_missing_is_not_found,
        delete_file,
        delete_empty_dir,
        delete_non_empty_dir,
        delete_missing_is_not_found,
        copy_file,
        copy_missing_is_not_found,
        copy_onto_existing_file,
        copy_directory_is_refused,
        quota,
        changes_quiet,
        changes_after_cursor,
        changes_after_rename,
        revision_changes_with_content,
    ]
    backends {
        /// The in-memory test double; its listings come three entries a page.
        memory => Expect {
            paging: Paging::Stream { page: 3 },
            replaced_revision_read: ReplacedRevisionRead::PreconditionFailed,
            copy_onto_file: CopyOntoFile::Replaces,
            copy_directory: CopyDirectory::IsADirectory,
            // A fixed 1 TiB account.
            quota: QuotaReport::Account { total: 1 << 40 },
            feed: Feed::None,
        };
        /// A local folder.
        local => Expect {
            paging: Paging::Single,
            replaced_revision_read: ReplacedRevisionRead::PreconditionFailed,
            copy_onto_file: CopyOntoFile::Replaces,
            copy_directory: CopyDirectory::IsADirectory,
            quota: QuotaReport::Filesystem,
            feed: Feed::None,
        };
        /// `rclone serve webdav` over a local folder.
        rclone => Expect {
            paging: Paging::Single,
            replaced_revision_read: ReplacedRevisionRead::PreconditionFailed,
            copy_onto_file: CopyOntoFile::Replaces,
            copy_directory: CopyDirectory::IsADirectory,
            quota: QuotaReport::Unknown,
            feed: Feed::RefusedOnFirstUse,
        };
        /// Apache httpd with mod_dav_fs.
        apache => Expect {
            paging: Paging::Single,
            replaced_revision_read: ReplacedRevisionRead::PreconditionFailed,
            copy_onto_file: CopyOntoFile::Replaces,
            copy_directory: CopyDirectory::IsADirectory,
            quota: QuotaReport::Unknown,
            feed: Feed::RefusedOnFirstUse,
        };
        /// The Nextcloud emulation: quota properties and sync-collection.
        nextcloud => Expect {
            paging: Paging::Single,
            replaced_revision_read: ReplacedRevisionRead::PreconditionFailed,
            copy_onto_file: CopyOntoFile::Replaces,
            copy_directory: CopyDirectory::IsADirectory,
            quota: QuotaReport::Account { total: fixtures::NEXTCLOUD_QUOTA },
            feed: Feed::Delta,
        };
        /// The Drive emulator, answering listings two entries a page.
        drive => Expect {
            paging: Paging::Server { page: fixtures::DRIVE_PAGE },
            replaced_revision_read: ReplacedRevisionRead::OldContent,
            copy_onto_file: CopyOntoFile::AlreadyExists,
            copy_directory: CopyDirectory::Unsupported,
            quota: QuotaReport::Account { total: fixtures::DRIVE_QUOTA },
            feed: Feed::Delta,
        };
        /// The Graph emulator (OneDrive for Business), listings two entries a page. A copy
        /// onto a file replaces it (the provider deletes the target first: Graph's copy
        /// refuses a taken name). The change feed is Graph's delta.
        onedrive => Expect {
            paging: Paging::Server { page: fixtures::ONEDRIVE_PAGE },
            replaced_revision_read: ReplacedRevisionRead::PreconditionFailed,
            copy_onto_file: CopyOntoFile::Replaces,
            copy_directory: CopyDirectory::IsADirectory,
            quota: QuotaReport::Account { total: fixtures::ONEDRIVE_QUOTA },
            feed: Feed::Delta,
        };
        /// The Dropbox emulator, listings two entries a page. Reads at a replaced revision
        /// read that revision (`rev:…`); a copy never replaces (`to/conflict`); the feed is
        /// a recursive cursor continued with `list_folder/continue`.
        dropbox => Expect {
            paging: Paging::Server { page: fixtures::DROPBOX_PAGE },
            replaced_revision_read: ReplacedRevisionRead::OldContent,
            copy_onto_file: CopyOntoFile::AlreadyExists,
            copy_directory: CopyDirectory::IsADirectory,
            quota: QuotaReport::Account { total: fixtures::DROPBOX_QUOTA },
            feed: Feed::Delta,
        };
    }
}
