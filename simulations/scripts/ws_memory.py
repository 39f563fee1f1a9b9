#!/usr/bin/env python3
"""WebSocket benchmark: N buyers each watching their own order live.

Starts `panshi serve` on a free port with a fresh data dir, creates N orders, opens N live
WebSockets (the first frame of each is awaited), and reports the server's RSS per open
socket. Then pays a sample of orders and measures the push latency from the notify's
`success` to the `delivered` frame at the buyer. Needs Python 3.9+ and `websockets`.

    python3 simulations/scripts/ws_memory.py target/release/panshi 10000
"""
import asyncio, hashlib, json, os, socket, subprocess, sys, tempfile, time, urllib.request

BIN, N = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 10000
ADMIN, PID, KEY = 'bench-admin', '1001', 'bench-key'
SAMPLE = min(1000, N)


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f'/proc/{pid}/status') as f:
        return next(int(l.split()[1]) for l in f if l.startswith('VmRSS:'))


def http(method, url, body=None, headers=None, ctype='application/json'):
    data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}, **({'Content-Type': ctype} if data else {})))
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read().decode() or 'null')


def notify_params(order):
    cents = order['amount_cents']
    p = {'pid': PID, 'trade_no': 'G' + order['order_id'], 'out_trade_no': order['order_id'], 'type': 'alipay',
         'name': 'bench', 'money': f'{cents // 100}.{cents % 100:02d}', 'trade_status': 'TRADE_SUCCESS'}
    signed = '&'.join(f'{k}={v}' for k, v in sorted(p.items()))
    p['sign'] = hashlib.md5((signed + KEY).encode()).hexdigest()
    p['sign_type'] = 'MD5'
    return urllib.parse.urlencode(p)


async def main():
    import websockets
    port, data = free_port(), tempfile.mkdtemp(prefix='panshi-ws-bench-')
    base = f'http://127.0.0.1:{port}'
    env = dict(os.environ, PANSHI_ADMIN_TOKEN=ADMIN, PANSHI_EPAY__PID=PID, PANSHI_EPAY__KEY=KEY,
               PANSHI_EPAY__GATEWAY_URL='http://127.0.0.1:9', PANSHI_LOG__LEVEL='warn',
               PANSHI_ORDER_TTL_SECS='3600',
               PANSHI_LIMITS__CREATE__PER_SECOND='1000000', PANSHI_LIMITS__CREATE__BURST='1000000',
               PANSHI_LIMITS__WEBSOCKET__PER_SECOND='1000000', PANSHI_LIMITS__WEBSOCKET__BURST='1000000',
               PANSHI_RISK__RESERVED_UNITS_PER_CONTACT_MAX='0', PANSHI_RISK__RESERVED_UNITS_PER_IP_MAX='0',
               PANSHI_RISK__ORDERS_PER_CONTACT_PER_WINDOW_MAX='0', PANSHI_RISK__ORDERS_PER_IP_PER_MINUTE_MAX='0')
    server = subprocess.Popen([BIN, 'serve', '--listen', f'127.0.0.1:{port}', '--data', data], env=env,
                              stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(base + '/readyz', timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        admin = {'Authorization': f'Bearer {ADMIN}'}
        http('POST', base + '/api/v1/admin/products', {'sku': 'ws', 'name': 'WS', 'price_cents': 100, 'currency': 'CNY'}, admin)
        keys = ''.join(f'WS-KEY-{i:08d}\n' for i in range(N)).encode()
        http('POST', base + '/api/v1/admin/products/ws/cards', keys, admin, 'text/plain')
        orders = [http('POST', base + '/api/v1/orders', {'sku': 'ws', 'quantity': 1, 'contact': f'b{i}@x', 'channel': 'epay'})
                  for i in range(N)]
        before = rss_kib(server.pid)
        sockets = []
        for i in range(0, N, 500):
            batch = orders[i:i + 500]
            conns = await asyncio.gather(*[websockets.connect(
                f"ws://127.0.0.1:{port}/api/v1/orders/{o['order_id']}/live?token={o['token']}",
                max_size=4096, open_timeout=30) for o in batch])
            for c in conns:
                await c.recv()
            sockets.extend(conns)
        await asyncio.sleep(1)
        after = rss_kib(server.pid)
        print(f'{len(sockets)} live sockets: server RSS {before} KiB -> {after} KiB, '
              f'{(after - before) / len(sockets):.1f} KiB per socket')
        latencies = []
        for o, ws in zip(orders[:SAMPLE], sockets[:SAMPLE]):
            r = urllib.request.urlopen(base + '/api/v1/payments/epay/notify?' + notify_params(o), timeout=30)
            acked = time.perf_counter()
            assert r.read() == b'success'
            while True:
                frame = json.loads(await ws.recv())
                if frame['status'] == 'delivered':
                    latencies.append((time.perf_counter() - acked) * 1000)
                    break
        latencies.sort()
        q = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))]
        print(f'push after notify success, {len(latencies)} orders: p50 {q(0.5):.2f} ms, p99 {q(0.99):.2f} ms, max {latencies[-1]:.2f} ms')
        for ws in sockets:
            await ws.close()
    finally:
        server.terminate()
        server.wait(20)


import urllib.parse
asyncio.run(main())
