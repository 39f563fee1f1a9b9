#!/usr/bin/env python3
"""Reseller benchmark (issue 8): bulk purchases of 100 keys per request, and stream push
latency with many resellers connected.

Starts `panshi serve` on a free port with a fresh data dir (per-key rate limits raised:
this measures the shop, not the limiter), then:
1. one reseller buys BATCHES x 100 keys from WORKERS threads: keys/s and request p50/p99;
2. RESELLERS resellers (env, default 1,000) each hold their stream WebSocket open; each buys
   one key (8 purchases in flight) and both the time to the 201 and the time to the stream
   frame are measured from the moment the request is sent. The frame is pushed right after
   the commit, so request -> frame bounds commit -> push from above.
Needs Python 3.9+ and `websockets`.

    python3 simulations/scripts/reseller_bulk.py target/release/panshi
"""
import asyncio, concurrent.futures, json, os, socket, subprocess, sys, tempfile, time, urllib.request

BIN = sys.argv[1]
BATCHES, WORKERS, QUANTITY = 200, 4, 100
RESELLERS = int(os.environ.get('RESELLERS', '1000'))
PUSH_SAMPLE, PUSH_CONCURRENCY = RESELLERS, 8
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


async def stream_push(base, port, server_pid):
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
    rss_kib = int(next(line for line in open(f'/proc/{server_pid}/status') if line.startswith('VmRSS')).split()[1])
    to_answer, to_frame = [], []
    gate = asyncio.Semaphore(PUSH_CONCURRENCY)

    async def one(key, ws):
        async with gate:
            sent = time.perf_counter()
            frame = asyncio.ensure_future(ws.recv())
            status, _ = await asyncio.to_thread(call, 'POST', base + '/api/v1/reseller/orders', {'sku': 'bulk', 'quantity': 1}, key)
            to_answer.append((time.perf_counter() - sent) * 1000)
            assert status == 201
            event = json.loads(await asyncio.wait_for(frame, 10))
            to_frame.append((time.perf_counter() - sent) * 1000)
            assert event['seq'] == 1 and event['status'] == 'delivered', event

    await asyncio.gather(*[one(key, ws) for key, ws in list(zip(keys, sockets))[:PUSH_SAMPLE]])
    # Close concurrently: each close handshake waits for the server to drop the TCP connection.
    await asyncio.gather(*[ws.close() for ws in sockets])
    print(f'stream push with {len(sockets)} resellers connected (server RSS {rss_kib / 1024:.0f} MiB), '
          f'{len(to_frame)} purchases, {PUSH_CONCURRENCY} at a time: request -> 201 p50 {quantile(to_answer, 0.5):.2f} ms '
          f'p99 {quantile(to_answer, 0.99):.2f} ms; request -> stream frame p50 {quantile(to_frame, 0.5):.2f} ms '
          f'p99 {quantile(to_frame, 0.99):.2f} ms')


def main():
    port, data = free_port(), tempfile.mkdtemp(prefix='panshi-reseller-bench-')
    base = f'http://127.0.0.1:{port}'
    env = dict(os.environ, PANSHI_ADMIN_TOKEN=ADMIN, PANSHI_LOG__LEVEL='warn',
               PANSHI_RESELLERS__RATE_PER_SECOND='1000000', PANSHI_RESELLERS__RATE_BURST='1000000',
               PANSHI_RESELLERS__STREAM_RATE_PER_SECOND='1000000', PANSHI_RESELLERS__STREAM_RATE_BURST='1000000')
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
        asyncio.run(stream_push(base, port, server.pid))
    finally:
        server.terminate()
        server.wait(20)
        out = subprocess.run([BIN, 'audit', '--data', data], capture_output=True, text=True)
        print(out.stdout.strip().splitlines()[-1])


main()
