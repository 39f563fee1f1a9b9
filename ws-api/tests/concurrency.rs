//! Concurrent buyers and gateways against one real server.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_buyers_race_for_a_few_keys() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(Server::start(dir.path()));
    const KEYS: usize = 7;
    const BUYERS: usize = 300;
    server.product("rush", 100, &keys("RUSH", KEYS)).await;
    let mut tasks = Vec::new();
    for _ in 0..BUYERS {
        let server = server.clone();
        tasks.push(tokio::spawn(async move { server.order("rush", 1).await }));
    }
    let mut won = Vec::new();
    let mut sold_out = 0;
    for task in tasks {
        let (code, body) = task.await.unwrap();
        match code {
            201 => won.push(body),
            409 => {
                assert_eq!(body["error"], "sold_out");
                sold_out += 1;
            }
            other => panic!("unexpected answer {other}: {body}"),
        }
    }
    assert_eq!(won.len(), KEYS, "exactly as many win as there are keys");
    assert_eq!(sold_out, BUYERS - KEYS);
    let mut delivered = HashSet::new();
    for order in &won {
        assert_eq!(server.pay(order).await.0, 200);
        let (_, view) = server.lookup(order).await;
        for card in view["cards"].as_array().unwrap() {
            assert!(
                delivered.insert(card.as_str().unwrap().to_owned()),
                "key sold twice: {card}"
            );
        }
    }
    assert_eq!(delivered.len(), KEYS);
    assert_eq!(server.stock("rush").await, (0, 0, KEYS as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_concurrent_duplicate_notifies_deliver_each_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(Server::start(dir.path()));
    const ORDERS: usize = 40;
    server.product("dup", 250, &keys("DUP", ORDERS)).await;
    let mut orders = Vec::new();
    for _ in 0..ORDERS {
        let (code, order) = server.order("dup", 1).await;
        assert_eq!(code, 201);
        orders.push(order);
    }
    let mut tasks = Vec::new();
    for order in &orders {
        for _ in 0..3 {
            let server = server.clone();
            let order = order.clone();
            tasks.push(tokio::spawn(async move { server.pay(&order).await }));
        }
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), (200, "success".to_owned()));
    }
    let mut delivered = HashSet::new();
    for order in &orders {
        let (_, view) = server.lookup(order).await;
        assert_eq!(view["status"], "delivered");
        let cards = view["cards"].as_array().unwrap();
        assert_eq!(cards.len(), 1);
        assert!(delivered.insert(cards[0].as_str().unwrap().to_owned()));
    }
    assert_eq!(server.stock("dup").await, (0, 0, ORDERS as u64));
}
