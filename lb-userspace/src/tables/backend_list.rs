//! The plain backend list of rr, random and least-conn.

use super::{TableBackend, sorted_by_addr};

/// The backend ids in address order, one entry each (weights are not repeated here; least-conn reads
/// them from `LB_BACKENDS`).
pub fn build_backend_list(backends: &[TableBackend]) -> Vec<u32> {
    sorted_by_addr(backends).into_iter().map(|b| b.id).collect()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn backend(id: u32, addr: &str) -> TableBackend {
        let addr: SocketAddr = addr.parse().expect("test address");
        TableBackend {
            id,
            addr,
            weight: 1,
        }
    }

    #[test]
    fn ids_follow_address_order_not_input_order() {
        let input = [
            backend(7, "198.18.2.12:80"),
            backend(3, "198.18.2.2:80"),
            backend(9, "198.18.10.1:80"),
            backend(1, "198.18.2.11:80"),
        ];
        // Numeric address order: 198.18.2.2 < 198.18.2.11 < 198.18.2.12 < 198.18.10.1.
        assert_eq!(build_backend_list(&input), vec![3, 1, 7, 9]);
        let mut reversed = input.clone();
        reversed.reverse();
        assert_eq!(build_backend_list(&reversed), vec![3, 1, 7, 9]);
        assert!(build_backend_list(&[]).is_empty());
    }
}
