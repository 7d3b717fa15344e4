// The floor for bench/run: a bare Hummingbird server that forwards each POST to one upstream
// URL with AsyncHTTPClient and returns the answer. No authentication, parsing or accounting,
// so the gap between it and `interlock` is what Interlock's pipeline costs.
import AsyncHTTPClient
import Hummingbird
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

let arguments = CommandLine.arguments
guard arguments.count == 3, let port = Int(arguments[1]) else {
    print("usage: interlock-bench-passthrough PORT UPSTREAM_URL")
    exit(2)
}
let upstream = arguments[2]
let router = Router()
router.post("/v1/chat/completions") { request, _ -> Response in
    var request = request
    let body = try await request.collectBody(upTo: 4 << 20)
    var outbound = HTTPClientRequest(url: upstream)
    outbound.method = .POST
    outbound.headers.add(name: "content-type", value: "application/json")
    outbound.body = .bytes(body)
    let response = try await HTTPClient.shared.execute(outbound, timeout: .seconds(30))
    let bytes = try await response.body.collect(upTo: 64 << 20)
    return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: bytes))
}
let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: port)))
try await app.runService()
