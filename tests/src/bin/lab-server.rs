//! The lab's backend server: greets every connection with its name, then echoes each line it reads
//! prefixed with its name, until the client closes.
//!
//! `lab-server --name b0 --listen 0.0.0.0:80 --listen [::]:80` prints `ready` on stdout once every
//! listener is bound (the lab waits for that line), then serves until it is killed.

use std::io::Write as _;
use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
#[command(about = "Greets each TCP connection with a name and echoes its lines")]
struct Args {
    /// What the server answers (`b0`, `b1`, …).
    #[arg(long)]
    name: String,
    /// An address to listen on; repeatable. IPv6 listeners are IPv6-only, so `0.0.0.0:80` and
    /// `[::]:80` can both be given.
    #[arg(long = "listen", required = true)]
    listen: Vec<SocketAddr>,
}

/// Long lines are cut off rather than buffered without limit.
const MAX_LINE: usize = 64 * 1024;

fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listeners = args
        .listen
        .iter()
        .map(|&addr| bind(addr).with_context(|| format!("cannot listen on {addr}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(serve(args.name, listeners))
}

async fn serve(name: String, listeners: Vec<std::net::TcpListener>) -> anyhow::Result<()> {
    let mut accepting = tokio::task::JoinSet::new();
    for listener in listeners {
        let listener = TcpListener::from_std(listener).context("cannot register a listener")?;
        accepting.spawn(accept_loop(name.clone(), listener));
    }
    let mut stdout = std::io::stdout();
    writeln!(stdout, "ready")
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")?;
    // Accept loops end only on an accept error, which ends the server.
    match accepting.join_next().await {
        Some(Ok(Err(e))) => Err(e),
        Some(Err(e)) => Err(e).context("an accept loop panicked"),
        Some(Ok(Ok(()))) | None => Ok(()),
    }
}

async fn accept_loop(name: String, listener: TcpListener) -> anyhow::Result<()> {
    let local = listener.local_addr()?;
    loop {
        let (conn, peer) = listener
            .accept()
            .await
            .with_context(|| format!("accept on {local}"))?;
        let name = name.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(&name, conn).await {
                eprintln!("lab-server {name}: connection from {peer}: {e:#}");
            }
        });
    }
}

async fn handle(name: &str, conn: TcpStream) -> anyhow::Result<()> {
    conn.set_nodelay(true)?;
    let (read, mut write) = conn.into_split();
    write.write_all(format!("{name}\n").as_bytes()).await?;
    let mut lines = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        let n = (&mut lines)
            .take(MAX_LINE as u64)
            .read_line(&mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let reply = format!("{name} {}\n", line.trim_end_matches(['\r', '\n']));
        write.write_all(reply.as_bytes()).await?;
    }
}
