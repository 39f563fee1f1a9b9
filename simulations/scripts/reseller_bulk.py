#!/usr/bin/env python3
"""Reseller benchmark (issue 8): bulk purchases of 100 keys per request, and stream push
latency with many resellers connected.

Starts `panshi serve` on a free port with a fresh data dir (per-key rate limits raised:
this measures the shop, not the limiter), then:
1. one reseller buys BATCHES x 100 keys from WORKERS threads: keys/s and request p50/p99;
2. RESELLERS resellers each hold their stream WebSocket open; a sample of them buys one
   key each and the time from the purchase's 201 to the stream frame is measured.
Needs Python 3.9+ and `websockets`.

    python3 simulations/scripts/reseller_bulk.py target/release/panshi
"""
import asyncio, concurrent.futures, json, os, socket, subprocess, sys, tempfile, time, urllib.request

BIN = sys.argv[1]
BATCHES, WORKERS, QUANTITY = 200, 4, 100
RESELLERS, PUSH_SAMPLE = 1000, 200
ADMIN = 'bench-admin'


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def call(method, url, body=None, token=None, ctype='application/json'):
    data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
    headers = {'Content-Type': ctype} if data else {}
    if token:
        headers['Authorization'] = f'Bearer {token}'
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status, json.loads(r.read().decode() or 'null')


def quantile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def stream_push(base, port):
    import websockets
    keys = []
    for n in range(RESELLERS):
        _, r = call('POST', base + '/api/v1/admin/resellers', {'name': f'r{n}'}, ADMIN)
        call('POST', base + f"/api/v1/admin/resellers/{r['reseller_id']}/balance", {'amount_cents': 10_000, 'note': 'bench'}, ADMIN)
        keys.append(r['api_key'])
    sockets = []
    for i in range(0, RESELLERS, 200):
        batch = keys[i:i + 200]
        sockets += await asyncio.gather(*[websockets.connect(
            f'ws://127.0.0.1:{port}/api/v1/reseller/stream?cursor=0',
            additional_headers={'Authorization': f'Bearer {k}'}, max_size=65536) for k in batch])
    await asyncio.sleep(0.5)
    latencies = []
    for key, ws in list(zip(keys, sockets))[:PUSH_SAMPLE]:
        status, _ = await asyncio.to_thread(call, 'POST', base + '/api/v1/reseller/orders', {'sku': 'bulk', 'quantity': 1}, key)
        answered = time.perf_counter()
        assert status == 201
        await ws.recv()
        latencies.append((time.perf_counter() - answered) * 1000)
    for ws in sockets:
        await ws.close()
    print(f'stream push with {len(sockets)} resellers connected, {len(latencies)} purchases: '
          f'p50 {quantile(latencies, 0.5):.2f} ms, p99 {quantile(latencies, 0.99):.2f} ms (201 answered -> frame received)')


def main():
    port, data = free_port(), tempfile.mkdtemp(prefix='panshi-reseller-bench-')
    base = f'http://127.0.0.1:{port}'
    env = dict(os.environ, PANSHI_ADMIN_TOKEN=ADMIN, PANSHI_LOG__LEVEL='warn',
               PANSHI_RESELLERS__RATE_PER_SECOND='1000000', PANSHI_RESELLERS__RATE_BURST='1000000')
    server = subprocess.Popen([BIN, 'serve', '--listen', f'127.0.0.1:{port}', '--data', data], env=env,
                              stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(base + '/readyz', timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        call('POST', base + '/api/v1/admin/products', {'sku': 'bulk', 'name': 'Bulk', 'price_cents': 100, 'currency': 'CNY'}, ADMIN)
        total = BATCHES * QUANTITY + RESELLERS
        for start in range(0, total, 100_000):
            keys = ''.join(f'BULK-{i:09d}\n' for i in range(start, min(total, start + 100_000))).encode()
            call('POST', base + '/api/v1/admin/products/bulk/cards', keys, ADMIN, 'text/plain')
        _, r = call('POST', base + '/api/v1/admin/resellers', {'name': 'bulk'}, ADMIN)
        call('POST', base + f"/api/v1/admin/resellers/{r['reseller_id']}/balance",
             {'amount_cents': BATCHES * QUANTITY * 100, 'note': 'bench'}, ADMIN)
        key = r['api_key']

        def buy(_):
            started = time.perf_counter()
            status, answer = call('POST', base + '/api/v1/reseller/orders', {'sku': 'bulk', 'quantity': QUANTITY}, key)
            assert status == 201 and len(answer['cards']) == QUANTITY, answer
            return (time.perf_counter() - started) * 1000

        began = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
            latencies = list(pool.map(buy, range(BATCHES)))
        elapsed = time.perf_counter() - began
        print(f'bulk: {BATCHES} purchases x {QUANTITY} keys from {WORKERS} workers in {elapsed:.2f} s = '
              f'{BATCHES * QUANTITY / elapsed:.0f} keys/s; request p50 {quantile(latencies, 0.5):.2f} ms, '
              f'p99 {quantile(latencies, 0.99):.2f} ms')
        asyncio.run(stream_push(base, port))
    finally:
        server.terminate()
        server.wait(20)
        out = subprocess.run([BIN, 'audit', '--data', data], capture_output=True, text=True)
        print(out.stdout.strip().splitlines()[-1])


main()
