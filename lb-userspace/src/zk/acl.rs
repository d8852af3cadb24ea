//! ACLs of the nodes `lb` creates. Without credentials anyone may change them (ZooKeeper's open
//! default). With credentials only the creating identity may change them and everyone may read, so
//! the daemons (which only read) need no write access.

use zookeeper_client::{Acl, Acls, Permission};

static CREATOR_WRITES_ANYONE_READS: [Acl; 2] = [
    Acl::new_const(Permission::ALL, "auth", ""),
    Acl::new_const(Permission::READ, "world", "anyone"),
];

/// The ACLs for a node created by a session with (`authenticated`) or without credentials.
pub fn node_acls(authenticated: bool) -> Acls<'static> {
    if authenticated {
        Acls::new(&CREATOR_WRITES_ANYONE_READS)
    } else {
        Acls::anyone_all()
    }
}
