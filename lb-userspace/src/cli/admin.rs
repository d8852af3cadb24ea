//! `lb service put|rm|ls` and `lb backend put|rm|weight|ls`: the arguments, and the dispatch to
//! `lb_userspace::admin`.

use std::net::SocketAddr;

use clap::Subcommand;
use lb_userspace::admin::{
    ServiceFields, list_backends, list_services, put_backend, put_service, remove_backend,
    remove_service, render_backends, render_services, set_backend_weight,
};
use lb_userspace::model::{BackendSpec, BackendState, MAX_WEIGHT};
use lb_userspace::zk::client::ZkTarget;
use zookeeper_client::Client;

use super::zk::ZkArgs;

#[derive(Subcommand, Debug)]
pub enum ServiceCommand {
    /// Create a service or replace its fields (its backends stay).
    Put {
        #[command(flatten)]
        zk: ZkArgs,
        name: String,
        /// IP:PORT clients connect to ([2001:db8::100]:80 for IPv6).
        #[arg(long)]
        vip: SocketAddr,
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
    /// Add a (persistent) backend to a service or replace its weight and state.
    Put {
        #[command(flatten)]
        zk: ZkArgs,
        service: String,
        addr: SocketAddr,
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// active or draining.
        #[arg(long, default_value = "active")]
        state: String,
    },
    /// Remove a backend.
    Rm {
        #[command(flatten)]
        zk: ZkArgs,
        service: String,
        addr: SocketAddr,
    },
    /// Change a backend's weight (0 to 65535; 0 takes no new connections).
    Weight {
        #[command(flatten)]
        zk: ZkArgs,
        service: String,
        addr: SocketAddr,
        weight: u32,
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
                let fields = ServiceFields {
                    vip: Some(vip),
                    scheduler,
                    persistence_timeout_s,
                    persistence_netmask,
                    health_check,
                    panic_threshold,
                };
                let (client, target) = connect(&zk).await?;
                let outcome = put_service(&client, &target, &name, &fields.to_json(vip)).await?;
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
                if weight > MAX_WEIGHT {
                    anyhow::bail!("--weight {weight} is above the maximum {MAX_WEIGHT}");
                }
                let mut backend = BackendSpec::new(addr);
                backend.weight = weight;
                backend.state = BackendState::from_name(&state)?;
                let (client, target) = connect(&zk).await?;
                let outcome = put_backend(&client, &target, &service, &backend).await?;
                println!("backend {addr} of {service} {}", outcome.verb());
            }
            BackendCommand::Rm { zk, service, addr } => {
                let (client, target) = connect(&zk).await?;
                remove_backend(&client, &target, &service, addr).await?;
                println!("backend {addr} of {service} removed");
            }
            BackendCommand::Weight {
                zk,
                service,
                addr,
                weight,
            } => {
                let (client, target) = connect(&zk).await?;
                set_backend_weight(&client, &target, &service, addr, weight).await?;
                println!("backend {addr} of {service} weight {weight}");
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
