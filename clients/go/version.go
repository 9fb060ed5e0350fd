package comfyreality

// Version is this SDK's version: the same for the server and every SDK, set by
// scripts/bump-version.sh and released as the tag clients/go/vVERSION.
const Version = "0.1.0"
