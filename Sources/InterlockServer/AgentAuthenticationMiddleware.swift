import HTTPTypes
import Hummingbird
import InterlockCore
import InterlockRuntime

/// The authenticate stage at the HTTP edge: reads `Authorization: Bearer` or `x-api-key`
/// (what Anthropic clients send) and asks the governor who it is.
struct AgentAuthenticationMiddleware: RouterMiddleware {
    typealias Context = InterlockRequestContext
    let governor: CallGovernor

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var context = context
        let key = Self.apiKey(authorization: request.headers[.authorization], xAPIKey: request.headers[HTTPField.Name("x-api-key")!])
        var caller = try await governor.authenticate(credential: key, requestID: context.requestID, target: request.uri.path)
        caller.run = try RunReference.fromHeaders(
            runID: request.headers[HTTPField.Name("x-interlock-run-id")!], parentRunID: request.headers[HTTPField.Name("x-interlock-parent-run-id")!])
        context.caller = caller
        context.logger[metadataKey: "interlock.agent.id"] = .string(caller.agent.id)
        // Which key or token was used (ids, never the secret): what an operator needs to revoke it.
        switch caller.credential {
        case .apiKey(let id): context.logger[metadataKey: "interlock.credential"] = .string("key:\(id)")
        case .accessToken(let id): context.logger[metadataKey: "interlock.credential"] = .string("token:\(id)")
        case .workflowRun(let id): context.logger[metadataKey: "interlock.credential"] = .string("run:\(id)")
        }
        return try await next(request, context)
    }

    /// The presented key: `Authorization: Bearer KEY`, else `x-api-key: KEY`.
    static func apiKey(authorization: String?, xAPIKey: String?) -> String? {
        // `Bearer <key>`, the scheme in any case; read from the bytes (every call asks).
        if var authorization, let key = authorization.withUTF8(bearerKey) { return key }
        return xAPIKey?.trimmingSpaces()
    }

    /// The key of `Bearer <key>` (spaces around it dropped), or nil for another scheme.
    private static func bearerKey(_ bytes: UnsafeBufferPointer<UInt8>) -> String? {
        let scheme: StaticString = "bearer "
        let schemeCount = scheme.utf8CodeUnitCount
        guard bytes.count > schemeCount else { return nil }
        for index in 0..<schemeCount where bytes[index] | 0x20 != scheme.utf8Start[index] { return nil }
        var start = schemeCount
        var end = bytes.count
        while start < end, bytes[start] == UInt8(ascii: " ") { start += 1 }
        while end > start, bytes[end - 1] == UInt8(ascii: " ") { end -= 1 }
        return String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<end]), as: UTF8.self)
    }
}

extension StringProtocol {
    func trimmingSpaces() -> String {
        let utf8 = Substring(self).utf8
        guard let first = utf8.firstIndex(where: { $0 != UInt8(ascii: " ") }), let last = utf8.lastIndex(where: { $0 != UInt8(ascii: " ") }) else {
            return ""
        }
        return String(Substring(utf8[first...last]))
    }
}
