//! A small HTTP/1.1 server on loopback for the download tests: GET with
//! optional Range support (RFC 9110 `bytes=N-`), and switches for faults.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// Answer 206 to `Range: bytes=N-`.
    pub ranges: bool,
    /// Answer this many requests with 500 first.
    pub fail_first: u32,
    /// Close the connection after this many body bytes, for this many responses.
    pub cut_after: Option<(u64, u32)>,
    /// Announce this many extra bytes in Content-Length, then close (every response).
    pub overstate: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    pub range: Option<String>,
}

pub struct Server {
    pub port: u16,
    pub faults: Arc<Mutex<Faults>>,
    pub log: Arc<Mutex<Vec<Request>>>,
    files: Arc<Mutex<HashMap<String, Arc<Vec<u8>>>>>,
}

impl Server {
    pub fn start(faults: Faults) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let faults = Arc::new(Mutex::new(faults));
        let log = Arc::new(Mutex::new(Vec::new()));
        let files: Arc<Mutex<HashMap<String, Arc<Vec<u8>>>>> = Arc::default();
        let (f2, l2, files2) = (faults.clone(), log.clone(), files.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (f, l, fs) = (f2.clone(), l2.clone(), files2.clone());
                std::thread::spawn(move || {
                    let _ = handle(conn, &f, &l, &fs);
                });
            }
        });
        Server {
            port,
            faults,
            log,
            files,
        }
    }

    pub fn put(&self, path: &str, body: Vec<u8>) {
        self.files
            .lock()
            .unwrap()
            .insert(path.to_string(), Arc::new(body));
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }
}

fn handle(
    conn: TcpStream,
    faults: &Mutex<Faults>,
    log: &Mutex<Vec<Request>>,
    files: &Mutex<HashMap<String, Arc<Vec<u8>>>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("").to_string(),
    );
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("range")
        {
            range = Some(v.trim().to_string());
        }
    }
    log.lock().unwrap().push(Request {
        path: path.clone(),
        range: range.clone(),
    });
    let mut out = conn;
    if method != "GET" {
        return out.write_all(
            b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    }
    let mut f = faults.lock().unwrap();
    if f.fail_first > 0 {
        f.fail_first -= 1;
        return out.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\nConnection: close\r\n\r\noops\n");
    }
    let Some(body) = files.lock().unwrap().get(&path).cloned() else {
        return out.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnot found\n",
        );
    };
    let start = match (&range, f.ranges) {
        (Some(r), true) => r
            .strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse::<u64>().ok()),
        _ => None,
    };
    let cut = match &mut f.cut_after {
        Some((n, times)) if *times > 0 => {
            *times -= 1;
            Some(*n)
        }
        _ => None,
    };
    let overstate = f.overstate;
    drop(f);
    let total = body.len() as u64;
    let (status, from) = match start {
        Some(s) if s >= total => {
            return out.write_all(format!("HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes());
        }
        Some(s) => ("206 Partial Content", s),
        None => ("200 OK", 0),
    };
    let len = total - from;
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nAccept-Ranges: {}\r\nConnection: close\r\n",
        len + overstate.unwrap_or(0),
        if start.is_some() || range.is_none() {
            "bytes"
        } else {
            "none"
        }
    );
    if start.is_some() {
        head.push_str(&format!(
            "Content-Range: bytes {from}-{}/{total}\r\n",
            total - 1
        ));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    let end = match cut {
        Some(n) => (from + n).min(total),
        None => total,
    };
    for chunk in body[from as usize..end as usize].chunks(64 * 1024) {
        out.write_all(chunk)?;
    }
    out.flush()?;
    // Cut or overstated responses end by closing the connection early.
    Ok(())
}
