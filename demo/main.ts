// The demo app arrives with the server (a later issue).
console.log("The demo arrives with SSEChannel: coming in a later issue.");
