public import InterlockPolicy

extension CELValue {
    /// JSON as CEL sees it: integers are `int`, other numbers `double`, objects maps with
    /// string keys.
    public init(json: JSONValue) {
        switch json {
        case .null: self = .null
        case .bool(let b): self = .bool(b)
        case .integer(let i): self = .int(i)
        case .number(let d): self = .double(d)
        case .string(let s): self = .string(s)
        case .array(let items): self = .list(items.map(CELValue.init(json:)))
        case .object(let object):
            var map = CELMap()
            for (key, value) in object { map.insert(.string(key), CELValue(json: value)) }
            self = .map(map)
        }
    }
}
