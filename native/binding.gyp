{
  "targets": [
    {
      "target_name": "sslwall_native",
      "sources": [
        "src/addon.cc",
        "src/common.cc",
        "src/handles.cc",
        "src/object.cc",
        "src/maps.cc",
        "src/links.cc",
        "src/sys.cc",
        "src/ringbuf.cc"
      ],
      "dependencies": ["<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
      "libraries": ["-lbpf", "-lelf", "-lz"]
    }
  ]
}
