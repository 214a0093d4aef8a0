//! A TCP proxy on 127.0.0.1:0 that a test can take down and bring back, to cut a server
//! off from a dependency (Redis, Postgres) without touching the machine's services.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{net::TcpListener, task::JoinHandle};

/// A switchable proxy.
pub struct TcpProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Starts forwarding to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let up = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (up_accept, conns_accept) = (Arc::clone(&up), Arc::clone(&connections));
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up_accept.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _copied =
                            tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                if let Ok(mut list) = conns_accept.lock() {
                    list.retain(|t| !t.is_finished());
                    list.push(task);
                }
            }
        });
        Ok(Self {
            addr,
            up,
            connections,
            accept,
        })
    }

    /// Takes the proxy down (open connections are cut, new ones refused) or brings it back.
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up && let Ok(mut list) = self.connections.lock() {
            for task in list.drain(..) {
                task.abort();
            }
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.set_up(false);
    }
}
