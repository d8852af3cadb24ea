//! A client of BIRD's control socket (what `birdc` speaks): connect, read the greeting, send
//! `configure`, read the reply. Replies are lines `CODE-text` (more follow), `CODE text` (the last),
//! ` text` (continues the previous code) or `+CODE text` (spontaneous, ignored); codes 0xxx are
//! success, 8xxx run-time and 9xxx parse errors (BIRD's "Reply codes" in its programmer's docs).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;

/// The whole exchange (greeting, command, reply) must fit in this.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// A reply longer than this is not BIRD's answer to `configure`.
const MAX_LINES: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    #[error(
        "cannot connect to BIRD's control socket {}: {source}; start bird (its socket is `bird -s \
         PATH`), or pass --birdc-socket with the path it uses",
        path.display()
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to BIRD on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("BIRD on {} did not answer within {}s", path.display(), TIMEOUT.as_secs())]
    Timeout { path: PathBuf },
    #[error("BIRD on {} closed the connection before it answered", path.display())]
    Closed { path: PathBuf },
    #[error(
        "BIRD on {} refused `configure` ({code}): {text}; fix the configuration it reads (bird.conf \
         and the files it includes), then `birdc configure`",
        path.display()
    )]
    Refused {
        path: PathBuf,
        code: u16,
        text: String,
    },
    #[error("BIRD on {} answered something that is not a reply line: {line:?}", path.display())]
    Garbled { path: PathBuf, line: String },
}

/// One line of a reply, as BIRD writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyLine {
    /// `CODE-text` (`last: false`) or `CODE text` (`last: true`).
    Coded { code: u16, last: bool, text: String },
    /// ` text`: more text of the previous code.
    Continued(String),
    /// `+CODE text`: a spontaneous message, not part of the reply.
    Spontaneous(String),
}

/// Parses one line; `None` when it is none of BIRD's forms.
pub fn parse_line(line: &str) -> Option<ReplyLine> {
    if let Some(rest) = line.strip_prefix(' ') {
        return Some(ReplyLine::Continued(rest.to_owned()));
    }
    if let Some(rest) = line.strip_prefix('+') {
        return Some(ReplyLine::Spontaneous(rest.to_owned()));
    }
    let code = line.get(..4)?;
    if !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let code: u16 = code.parse().ok()?;
    let last = match line.as_bytes().get(4) {
        Some(b' ') | None => true,
        Some(b'-') => false,
        Some(_) => return None,
    };
    Some(ReplyLine::Coded {
        code,
        last,
        text: line.get(5..).unwrap_or_default().to_owned(),
    })
}

/// The outcome of a whole reply: the final code and all its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl Reply {
    pub fn is_success(&self) -> bool {
        self.code < 1000
    }
}

/// Collects reply lines until the last one; `Ok(None)` while more are needed.
#[derive(Debug, Default)]
pub struct ReplyReader {
    texts: Vec<String>,
    /// The highest error code seen (an error anywhere in the reply fails it).
    error: Option<u16>,
}

impl ReplyReader {
    pub fn push(&mut self, line: ReplyLine) -> Option<Reply> {
        match line {
            ReplyLine::Spontaneous(_) => None,
            ReplyLine::Continued(text) => {
                self.texts.push(text);
                None
            }
            ReplyLine::Coded { code, last, text } => {
                if code >= 8000 {
                    self.error = Some(self.error.map_or(code, |e| e.max(code)));
                }
                if !text.is_empty() {
                    self.texts.push(text);
                }
                last.then(|| Reply {
                    code: self.error.unwrap_or(code),
                    text: self.texts.join("; "),
                })
            }
        }
    }
}

/// Asks the BIRD on `socket` to re-read its configuration; the reply's text on success.
pub async fn configure(socket: &Path) -> Result<String, BirdError> {
    let path = socket.to_path_buf();
    match tokio::time::timeout(TIMEOUT, exchange(socket, "configure")).await {
        Ok(Ok(reply)) if reply.is_success() => Ok(reply.text),
        Ok(Ok(reply)) => Err(BirdError::Refused {
            path,
            code: reply.code,
            text: reply.text,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(BirdError::Timeout { path }),
    }
}

/// Sends one command and reads its reply (after the greeting).
async fn exchange(socket: &Path, command: &str) -> Result<Reply, BirdError> {
    let path = socket.to_path_buf();
    let io = |source| BirdError::Io {
        path: path.clone(),
        source,
    };
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| BirdError::Connect {
            path: path.clone(),
            source,
        })?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    // The greeting is a reply of its own (0001 BIRD x.y ready.).
    read_reply(&mut lines, &path).await?;
    write
        .write_all(format!("{command}\n").as_bytes())
        .await
        .map_err(io)?;
    read_reply(&mut lines, &path).await
}

async fn read_reply(
    lines: &mut tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    path: &Path,
) -> Result<Reply, BirdError> {
    let mut reader = ReplyReader::default();
    for _ in 0..MAX_LINES {
        let line = lines.next_line().await.map_err(|source| BirdError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let Some(line) = line else {
            return Err(BirdError::Closed {
                path: path.to_path_buf(),
            });
        };
        let parsed = parse_line(&line).ok_or_else(|| BirdError::Garbled {
            path: path.to_path_buf(),
            line: line.clone(),
        })?;
        if let Some(reply) = reader.push(parsed) {
            return Ok(reply);
        }
    }
    Err(BirdError::Garbled {
        path: path.to_path_buf(),
        line: format!("(a reply of more than {MAX_LINES} lines)"),
    })
}
