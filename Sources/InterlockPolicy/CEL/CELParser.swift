/// A recursive-descent parser for the CEL grammar (cel-spec `langdef.md`), expanding macros
/// as it goes.
public struct CELParser {
    static let reserved: Set<String> = [
        "as", "break", "const", "continue", "else", "for", "function", "if", "import", "let", "loop", "package", "namespace", "return", "var",
        "void", "while", "in",
    ]
    /// Nesting past this is refused, so a crafted expression cannot exhaust the stack.
    public static let maxDepth = 200
    static let accumulator = "@result"

    private var lexer: CELLexer
    private var token: CELToken = .end
    private var offset = 0
    private var depth = 0

    /// Parses `text` into an expression tree.
    public static func parse(_ text: String) throws(CELSourceError) -> CELNode {
        var parser = CELParser(lexer: CELLexer(text))
        try parser.advance()
        let node = try parser.expression()
        guard parser.token == .end else { throw parser.error("unexpected \(parser.describe(parser.token)) after the end of the expression") }
        return node
    }

    private init(lexer: CELLexer) {
        self.lexer = lexer
    }

    private mutating func advance() throws(CELSourceError) {
        (token, offset) = try lexer.next()
    }

    private func error(_ message: String, at position: Int? = nil) -> CELSourceError {
        lexer.error(message, at: position ?? offset)
    }

    private func describe(_ token: CELToken) -> String {
        switch token {
        case .end: "end of input"
        case .punct(let p): "'\(p)'"
        case .ident(let name): "'\(name)'"
        default: "literal"
        }
    }

    private mutating func expect(_ punct: String) throws(CELSourceError) {
        guard token == .punct(punct) else { throw error("expected '\(punct)' but found \(describe(token))") }
        try advance()
    }

    private mutating func accept(_ punct: String) throws(CELSourceError) -> Bool {
        guard token == .punct(punct) else { return false }
        try advance()
        return true
    }

    private mutating func enter() throws(CELSourceError) {
        depth += 1
        if depth > Self.maxDepth { throw error("expression nested more than \(Self.maxDepth) levels deep") }
    }

    private mutating func expression() throws(CELSourceError) -> CELNode {
        try enter()
        defer { depth -= 1 }
        let condition = try logicalOr()
        guard token == .punct("?") else { return condition }
        let at = offset
        try advance()
        let then = try logicalOr()
        try expect(":")
        let otherwise = try expression()
        return CELNode(.call(target: nil, function: "_?_:_", args: [condition, then, otherwise]), offset: at)
    }

    private mutating func logicalOr() throws(CELSourceError) -> CELNode {
        var left = try logicalAnd()
        while token == .punct("||") {
            let at = offset
            try advance()
            let right = try logicalAnd()
            left = CELNode(.call(target: nil, function: "_||_", args: [left, right]), offset: at)
        }
        return left
    }

    private mutating func logicalAnd() throws(CELSourceError) -> CELNode {
        var left = try relation()
        while token == .punct("&&") {
            let at = offset
            try advance()
            let right = try relation()
            left = CELNode(.call(target: nil, function: "_&&_", args: [left, right]), offset: at)
        }
        return left
    }

    private static let relations: [String: String] = [
        "<": "_<_", "<=": "_<=_", ">": "_>_", ">=": "_>=_", "==": "_==_", "!=": "_!=_",
    ]

    private mutating func relation() throws(CELSourceError) -> CELNode {
        var left = try addition()
        while true {
            let function: String
            switch token {
            case .punct(let p) where Self.relations[p] != nil: function = Self.relations[p]!
            case .ident("in"): function = "@in"
            default: return left
            }
            let at = offset
            try advance()
            let right = try addition()
            left = CELNode(.call(target: nil, function: function, args: [left, right]), offset: at)
        }
    }

    private mutating func addition() throws(CELSourceError) -> CELNode {
        var left = try multiplication()
        while case .punct(let p) = token, p == "+" || p == "-" {
            let at = offset
            try advance()
            let right = try multiplication()
            left = CELNode(.call(target: nil, function: p == "+" ? "_+_" : "_-_", args: [left, right]), offset: at)
        }
        return left
    }

    private mutating func multiplication() throws(CELSourceError) -> CELNode {
        var left = try unary()
        while case .punct(let p) = token, p == "*" || p == "/" || p == "%" {
            let at = offset
            try advance()
            let right = try unary()
            left = CELNode(.call(target: nil, function: "_\(p)_", args: [left, right]), offset: at)
        }
        return left
    }

    private mutating func unary() throws(CELSourceError) -> CELNode {
        try enter()
        defer { depth -= 1 }
        let at = offset
        if token == .punct("!") {
            try advance()
            let operand = try unary()
            return CELNode(.call(target: nil, function: "!_", args: [operand]), offset: at)
        }
        if token == .punct("-") {
            try advance()
            // A minus directly on a numeric literal is part of the literal (so Int64.min parses).
            switch token {
            case .int(let value):
                try advance()
                return try member(CELNode(.literal(.int(-value)), offset: at))
            case .intOverflow:
                try advance()
                return try member(CELNode(.literal(.int(.min)), offset: at))
            case .double(let value):
                try advance()
                return try member(CELNode(.literal(.double(-value)), offset: at))
            default:
                let operand = try unary()
                return CELNode(.call(target: nil, function: "-_", args: [operand]), offset: at)
            }
        }
        return try member(try primary())
    }

    private mutating func member(_ base: CELNode) throws(CELSourceError) -> CELNode {
        var node = base
        while true {
            if token == .punct(".") {
                try advance()
                let at = offset
                if case .quotedIdent(let field) = token {
                    try advance()
                    node = CELNode(.select(node, field: field, testOnly: false), offset: at)
                    continue
                }
                guard case .ident(let field) = token else { throw error("expected a field or method name after '.' but found \(describe(token))") }
                try advance()
                if token == .punct("(") {
                    try advance()
                    let args = try expressionList(closing: ")")
                    node = try call(target: node, function: field, args: args, at: at)
                } else if token == .punct("{"), let typeName = Self.qualifiedName(node) {
                    node = try messageLiteral(typeName + "." + field, at: node.offset)
                } else {
                    node = CELNode(.select(node, field: field, testOnly: false), offset: at)
                }
            } else if token == .punct("[") {
                let at = offset
                try advance()
                let index = try expression()
                try expect("]")
                node = CELNode(.call(target: nil, function: "_[_]", args: [node, index]), offset: at)
            } else {
                return node
            }
        }
    }

    /// `a.b.c` as a dotted name, if the node is only identifiers and selections.
    private static func qualifiedName(_ node: CELNode) -> String? {
        switch node.kind {
        case .ident(let name): name
        case .select(let operand, let field, false): qualifiedName(operand).map { $0 + "." + field }
        default: nil
        }
    }

    private mutating func primary() throws(CELSourceError) -> CELNode {
        let at = offset
        switch token {
        case .int(let value):
            try advance()
            return CELNode(.literal(.int(value)), offset: at)
        case .intOverflow:
            throw error("int literal out of range")
        case .uint(let value):
            try advance()
            return CELNode(.literal(.uint(value)), offset: at)
        case .double(let value):
            try advance()
            return CELNode(.literal(.double(value)), offset: at)
        case .string(let value):
            try advance()
            return CELNode(.literal(.string(value)), offset: at)
        case .bytes(let value):
            try advance()
            return CELNode(.literal(.bytes(value)), offset: at)
        case .punct("("):
            try advance()
            let inner = try expression()
            try expect(")")
            return inner
        case .punct("["):
            try advance()
            let elements = try expressionList(closing: "]")
            return CELNode(.list(elements), offset: at)
        case .punct("{"):
            try advance()
            var entries: [(key: CELNode, value: CELNode)] = []
            while token != .punct("}") {
                let key = try expression()
                try expect(":")
                let value = try expression()
                entries.append((key, value))
                if !(try accept(",")) { break }
            }
            try expect("}")
            return CELNode(.map(entries), offset: at)
        case .punct("."):
            try advance()
            guard case .ident(let name) = token, !Self.reserved.contains(name) else { throw error("expected an identifier after a leading '.'") }
            return try identifier("." + name, at: at)
        case .ident(let name):
            switch name {
            case "true", "false":
                try advance()
                return CELNode(.literal(.bool(name == "true")), offset: at)
            case "null":
                try advance()
                return CELNode(.literal(.null), offset: at)
            default:
                guard !Self.reserved.contains(name) else { throw error("'\(name)' is a reserved word and cannot be used as an identifier") }
                return try identifier(name, at: at)
            }
        default:
            throw error("unexpected \(describe(token))")
        }
    }

    private mutating func identifier(_ name: String, at: Int) throws(CELSourceError) -> CELNode {
        try advance()
        if token == .punct("(") {
            try advance()
            let args = try expressionList(closing: ")")
            return try call(target: nil, function: name, args: args, at: at)
        }
        if token == .punct("{") { return try messageLiteral(name, at: at) }
        return CELNode(.ident(name), offset: at)
    }

    private mutating func messageLiteral(_ typeName: String, at: Int) throws(CELSourceError) -> CELNode {
        try expect("{")
        var fields: [(name: String, value: CELNode)] = []
        while token != .punct("}") {
            let field: String
            switch token {
            case .ident(let name), .quotedIdent(let name): field = name
            default: throw error("expected a field name but found \(describe(token))")
            }
            try advance()
            try expect(":")
            fields.append((field, try expression()))
            if !(try accept(",")) { break }
        }
        try expect("}")
        return CELNode(.message(typeName: typeName, fields: fields), offset: at)
    }

    private mutating func expressionList(closing: String) throws(CELSourceError) -> [CELNode] {
        var nodes: [CELNode] = []
        while token != .punct(closing) {
            nodes.append(try expression())
            if !(try accept(",")) { break }
        }
        try expect(closing)
        return nodes
    }

    // MARK: Macros

    private func call(target: CELNode?, function: String, args: [CELNode], at: Int) throws(CELSourceError) -> CELNode {
        if target == nil, function == "has", args.count == 1 {
            guard case .select(let operand, let field, _) = args[0].kind else { throw error("has() needs a field selection such as has(a.b)", at: at) }
            return CELNode(.select(operand, field: field, testOnly: true), offset: at)
        }
        if let target, let expanded = try macro(target: target, function: function, args: args, at: at) { return expanded }
        if target == nil, Self.reserved.contains(function) { throw error("'\(function)' is a reserved word", at: at) }
        return CELNode(.call(target: target, function: function, args: args), offset: at)
    }

    private func macro(target: CELNode, function: String, args: [CELNode], at: Int) throws(CELSourceError) -> CELNode? {
        let twoVariable: Bool
        switch (function, args.count) {
        case ("all", 2), ("exists", 2), ("exists_one", 2), ("map", 2), ("map", 3), ("filter", 2): twoVariable = false
        case ("all", 3), ("exists", 3), ("exists_one", 3), ("existsOne", 3), ("transformList", 3), ("transformList", 4),
            ("transformMap", 3), ("transformMap", 4):
            twoVariable = true
        default: return nil
        }
        func variable(_ node: CELNode) throws(CELSourceError) -> String {
            guard case .ident(let name) = node.kind, !name.hasPrefix(".") else { throw error("\(function)() needs a simple variable name", at: node.offset) }
            return name
        }
        let first = try variable(args[0])
        let second = twoVariable ? try variable(args[1]) : nil
        if let second, second == first { throw error("\(function)() needs two different variable names", at: args[1].offset) }
        if first == Self.accumulator || second == Self.accumulator { throw error("\(Self.accumulator) cannot be a variable name", at: at) }
        let body = Array(args.dropFirst(twoVariable ? 2 : 1))
        func node(_ kind: CELNode.Kind) -> CELNode { CELNode(kind, offset: at) }
        func fn(_ name: String, _ args: CELNode...) -> CELNode { node(.call(target: nil, function: name, args: args)) }
        let accu = node(.ident(Self.accumulator))
        let iterValue = node(.ident(second ?? first))
        let loop: (initial: CELNode, condition: CELNode, step: CELNode, result: CELNode)
        switch function {
        case "all":
            loop = (node(.literal(.bool(true))), fn("@not_strictly_false", accu), fn("_&&_", accu, body[0]), accu)
        case "exists":
            loop = (node(.literal(.bool(false))), fn("@not_strictly_false", fn("!_", accu)), fn("_||_", accu, body[0]), accu)
        case "exists_one", "existsOne":
            loop = (node(.literal(.int(0))), node(.literal(.bool(true))), fn("_?_:_", body[0], fn("_+_", accu, node(.literal(.int(1)))), accu),
                fn("_==_", accu, node(.literal(.int(1)))))
        case "map", "transformList":
            let transform = body.count == 2 ? body[1] : body[0]
            let append = fn("@append", accu, transform)
            loop = (node(.list([])), node(.literal(.bool(true))), body.count == 2 ? fn("_?_:_", body[0], append, accu) : append, accu)
        case "filter":
            loop = (node(.list([])), node(.literal(.bool(true))), fn("_?_:_", body[0], fn("@append", accu, iterValue), accu), accu)
        case "transformMap":
            let transform = body.count == 2 ? body[1] : body[0]
            let insert = fn("@insert", accu, node(.ident(first)), transform)
            loop = (node(.map([])), node(.literal(.bool(true))), body.count == 2 ? fn("_?_:_", body[0], insert, accu) : insert, accu)
        default:
            return nil
        }
        return node(.comprehension(CELComprehension(
            iterVar: first, iterVar2: second, range: target, accuVar: Self.accumulator, accuInit: loop.initial, condition: loop.condition, step: loop.step,
            result: loop.result)))
    }
}
