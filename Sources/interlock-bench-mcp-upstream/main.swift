// Benchmark upstream only (bench/tools/run): a fast MCP server over Streamable HTTP with one
// tool, `echo`, answering in JSON. The tool benchmark calls it directly and through Interlock.
import FoundationEssentials
import HTTPTypes
import Hummingbird
import InterlockCore
import NIOCore

let port = Int(CommandLine.arguments.dropFirst().first ?? "") ?? 9300
let router = Router()
let tool: JSONValue = [
    "name": "echo", "description": "Answers with what it was given.",
    "inputSchema": ["type": "object", "properties": ["text": ["type": "string"]], "required": ["text"]],
]
router.post("mcp") { request, _ -> Response in
    var request = request
    let body = try await request.collectBody(upTo: 1 << 20)
    guard case .object(let message)? = try? JSONParser.parse(Array(body.readableBytesView)) else { return Response(status: .badRequest) }
    guard let id = message["id"], let method = message["method"]?.stringValue else { return Response(status: .accepted) }
    let result: JSONValue
    var headers: HTTPFields = [.contentType: "application/json"]
    switch method {
    case "initialize":
        result = ["protocolVersion": message["params"]?["protocolVersion"] ?? "2025-11-25", "capabilities": ["tools": [:]], "serverInfo": ["name": "bench", "version": "1"]]
        headers[HTTPField.Name("mcp-session-id")!] = "bench-session"
    case "tools/list":
        result = ["tools": [tool]]
    case "tools/call":
        let text = message["params"]?["arguments"]?["text"] ?? ""
        result = ["content": [["type": "text", "text": text]], "structuredContent": ["text": text], "isError": false]
    default:
        result = [:]
    }
    return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: JSONWriter.bytes(["jsonrpc": "2.0", "id": id, "result": result]))))
}
let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: port)))
try await app.runService()
