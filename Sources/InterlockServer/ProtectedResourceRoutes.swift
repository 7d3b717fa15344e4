import HTTPTypes
import Hummingbird
import InterlockCore
import NIOCore

/// The agent-facing API as an OAuth protected resource: its metadata (RFC 9728) at
/// `/.well-known/oauth-protected-resource`, which every 401 names in `resource_metadata`, so
/// a client that has no token learns where to get one (the MCP authorization flow).
struct ProtectedResourceRoutes {
    static let metadataPath = "/.well-known/oauth-protected-resource"

    let settings: AuthSettings
    /// The scopes a token can carry here (`model:<alias>` per alias).
    let scopes: [String]

    func addRoutes(to router: Router<InterlockRequestContext>) {
        router.get(RouterPath(Self.metadataPath)) { request, _ in
            let base = PublicURL.base(configured: settings.publicURL, authority: request.head.authority)
            // Authorization servers are named by their issuer URL (RFC 8414 §2), and a client
            // checks that the metadata it fetches names the same issuer: listed only when
            // `auth.issuer` is a URL (set it to `auth.public_url` for that).
            var document: JSONObject = [
                "resource": .string(base), "bearer_methods_supported": ["header"],
                "scopes_supported": .array(scopes.map(JSONValue.string)), "resource_name": "Interlock",
            ]
            if settings.issuer.hasPrefix("https://") || settings.issuer.hasPrefix("http://") {
                document["authorization_servers"] = [.string(settings.issuer)]
            }
            return Response(
                status: .ok, headers: [.contentType: "application/json", .cacheControl: "max-age=300"],
                body: .init(byteBuffer: ByteBuffer(bytes: JSONWriter.bytes(.object(document)))))
        }
    }
}

/// Where clients reach this server: `auth.public_url` when configured, otherwise the
/// request's own `Host` over plain HTTP (Interlock serves HTTP; a TLS proxy in front should
/// set `auth.public_url`).
enum PublicURL {
    static func base(configured: String?, authority: String?) -> String {
        configured ?? "http://" + (authority ?? "localhost")
    }
}
