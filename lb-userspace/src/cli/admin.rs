//! `lb service put|rm|ls` and `lb backend put|rm|weight|ls`: the arguments, and the dispatch to
//! `lb_userspace::admin`.

use std::net::SocketAddr;

use clap::Subcommand;
use lb_userspace::admin::{
    BackendEdit, ServiceEdit, ServiceField, change_backend, list_backends, list_services,
    put_backend, put_service, remove_backend, remove_service, render_backends, render_services,
    set_backend_weight,
};
use lb_userspace::control::Request;
use lb_userspace::model::BackendState;
use lb_userspace::zk::client::ZkTarget;
use zookeeper_client::Client;

use super::local::LocalArgs;
use super::zk::{OptionalZkArgs, ZkArgs};

#[derive(Subcommand, Debug)]
pub enum ServiceCommand {
    /// Create a service, or change only the fields given (the others and the backends stay).
    Put {
        #[command(flatten)]
        zk: ZkArgs,
        name: String,
        /// IP:PORT clients connect to ([2001:db8::100]:80 for IPv6); needed to create.
        #[arg(long)]
        vip: Option<SocketAddr>,
        /// rr, wrr, random, wrandom, least-conn or maglev (default maglev).
        #[arg(long)]
        scheduler: Option<String>,
        /// Session persistence in seconds (default 0: off).
        #[arg(long)]
        persistence_timeout_s: Option<u32>,
        /// Prefix length of the persistence key (default: the whole client address).
        #[arg(long)]
        persistence_netmask: Option<u8>,
        /// Health check as JSON, e.g. '{"kind": "http", "path": "/healthz"}'.
        #[arg(long)]
        health_check: Option<String>,
        /// Percent of healthy backends below which new flows go to all backends (default 0: off).
        #[arg(long)]
        panic_threshold: Option<u8>,
        /// Take fields back to their defaults: scheduler, persistence_timeout_s,
        /// persistence_netmask, health_check, panic_threshold (repeat or comma-separate).
        #[arg(long, value_delimiter = ',')]
        unset: Vec<ServiceField>,
        /// Rewrite the node from the flags given alone (fields not given take their defaults).
        #[arg(long)]
        replace: bool,
    },
    /// Delete a service and all its backends (one transaction).
    Rm {
        #[command(flatten)]
        zk: ZkArgs,
        name: String,
    },
    /// List services.
    Ls {
        #[command(flatten)]
        zk: ZkArgs,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum BackendCommand {
    /// Add a (persistent) backend to a service, or change only the fields given.
    Put {
        #[command(flatten)]
        zk: ZkArgs,
        service: String,
        addr: SocketAddr,
        /// 0 to 65535 (a new backend: 1).
        #[arg(long)]
        weight: Option<u32>,
        /// active or draining (a new backend: active).
        #[arg(long)]
        state: Option<String>,
    },
    /// Remove a backend.
    Rm {
        #[command(flatten)]
        zk: ZkArgs,
        service: String,
        addr: SocketAddr,
    },
    /// Change a backend's weight (0 to 65535; 0 takes no new connections): in ZooKeeper with
    /// --zk, else in the local daemon's configuration file through its control socket.
    Weight {
        #[command(flatten)]
        zk: OptionalZkArgs,
        #[command(flatten)]
        local: LocalArgs,
        service: String,
        addr: SocketAddr,
        weight: u32,
    },
    /// Drain a backend (no new connections, established ones stay), or with --undo make it
    /// active again: in ZooKeeper with --zk, else through the local daemon's control socket.
    Drain {
        #[command(flatten)]
        zk: OptionalZkArgs,
        #[command(flatten)]
        local: LocalArgs,
        service: String,
        addr: SocketAddr,
        #[arg(long)]
        undo: bool,
    },
    /// List a service's backends.
    Ls {
        #[command(flatten)]
        zk: ZkArgs,
        service: String,
        #[arg(long)]
        json: bool,
    },
}

async fn connect(zk: &ZkArgs) -> anyhow::Result<(Client, ZkTarget)> {
    let target = zk.target()?;
    let client = target.connect(zk.session_timeout()).await?;
    Ok((client, target))
}

fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

/// `lb service ...`.
pub fn run_service(command: ServiceCommand) -> anyhow::Result<()> {
    block_on(async {
        match command {
            ServiceCommand::Put {
                zk,
                name,
                vip,
                scheduler,
                persistence_timeout_s,
                persistence_netmask,
                health_check,
                panic_threshold,
                unset,
                replace,
            } => {
                let health_check = health_check
                    .map(|h| {
                        serde_json::from_str(&h).map_err(|e| {
                            anyhow::anyhow!(
                                "--health-check is not JSON ({e}); e.g. '{{\"kind\": \"tcp\"}}'"
                            )
                        })
                    })
                    .transpose()?;
                let edit = ServiceEdit {
                    vip,
                    scheduler,
                    persistence_timeout_s,
                    persistence_netmask,
                    health_check,
                    panic_threshold,
                    unset,
                    replace,
                };
                edit.check(&name)?;
                let (client, target) = connect(&zk).await?;
                let outcome = put_service(&client, &target, &name, &edit).await?;
                println!("service {name} {}", outcome.verb());
            }
            ServiceCommand::Rm { zk, name } => {
                let (client, target) = connect(&zk).await?;
                let removed = remove_service(&client, &target, &name).await?;
                println!("service {name} removed with {} backends", removed.len());
            }
            ServiceCommand::Ls { zk, json } => {
                let (client, target) = connect(&zk).await?;
                let rows = list_services(&client, &target).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                } else {
                    print!("{}", render_services(&rows));
                }
            }
        }
        Ok(())
    })
}

/// `lb backend ...`.
pub fn run_backend(command: BackendCommand) -> anyhow::Result<()> {
    block_on(async {
        match command {
            BackendCommand::Put {
                zk,
                service,
                addr,
                weight,
                state,
            } => {
                let edit = BackendEdit {
                    weight,
                    state: state.as_deref().map(BackendState::from_name).transpose()?,
                };
                edit.check()?;
                let (client, target) = connect(&zk).await?;
                let outcome = put_backend(&client, &target, &service, addr, &edit).await?;
                println!("backend {addr} of {service} {}", outcome.verb());
            }
            BackendCommand::Rm { zk, service, addr } => {
                let (client, target) = connect(&zk).await?;
                remove_backend(&client, &target, &service, addr).await?;
                println!("backend {addr} of {service} removed");
            }
            BackendCommand::Weight {
                zk,
                local,
                service,
                addr,
                weight,
            } => {
                BackendEdit {
                    weight: Some(weight),
                    state: None,
                }
                .check()?;
                match zk.given() {
                    Some(zk) => {
                        let (client, target) = connect(&zk).await?;
                        set_backend_weight(&client, &target, &service, addr, weight).await?;
                        println!("backend {addr} of {service} weight {weight}");
                    }
                    None => println!(
                        "{}",
                        local.call(&Request::BackendWeight {
                            service,
                            backend: addr,
                            weight,
                        })?
                    ),
                }
            }
            BackendCommand::Drain {
                zk,
                local,
                service,
                addr,
                undo,
            } => {
                let state = if undo {
                    BackendState::Active
                } else {
                    BackendState::Draining
                };
                match zk.given() {
                    Some(zk) => {
                        let (client, target) = connect(&zk).await?;
                        let edit = BackendEdit {
                            weight: None,
                            state: Some(state),
                        };
                        change_backend(&client, &target, &service, addr, &edit).await?;
                        println!("backend {addr} of {service} {}", state.name());
                    }
                    None => println!(
                        "{}",
                        local.call(&Request::BackendState {
                            service,
                            backend: addr,
                            state,
                        })?
                    ),
                }
            }
            BackendCommand::Ls { zk, service, json } => {
                let (client, target) = connect(&zk).await?;
                let rows = list_backends(&client, &target, &service).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                } else {
                    print!("{}", render_backends(&rows));
                }
            }
        }
        Ok(())
    })
}
