"""Built-in name lists for VoxCeleb-style identities.

Names are drawn per culture so that a nationality comes with plausible names. Every list
has first names in each letter range of the split rule (A–B val, C–E test, F–Z train), so
any split can be filled from any culture. A few names carry the characters that trip up
naive tooling: spaces, accents, apostrophes, hyphens, dots and letters without an ASCII
decomposition (Ø). None of them reaches a shard key: keys use the identity index.
"""

from __future__ import annotations

# nationality -> (culture, weight); weights loosely follow VoxCeleb1's mix (mostly USA/UK).
NATIONALITIES: dict[str, tuple[str, float]] = {
    "USA": ("anglo", 0.52), "UK": ("anglo", 0.14), "Canada": ("anglo", 0.05),
    "Australia": ("anglo", 0.04), "Ireland": ("anglo", 0.03), "India": ("indian", 0.04),
    "Germany": ("german", 0.03), "France": ("french", 0.03), "Italy": ("italian", 0.03),
    "Spain": ("spanish", 0.025), "Mexico": ("spanish", 0.025), "Norway": ("nordic", 0.015),
    "Sweden": ("nordic", 0.015),
}

# culture -> {"m": first names, "f": first names, "last": last names}
_NAMES: dict[str, dict[str, str]] = {
    "anglo": {
        "m": "Aaron|Adam|Alan|Andrew|Anthony|Austin|A.J.|Ben|Billy Bob|Bradley|Brian|Bruce|"
             "Charles|Chris|Colin|Connor|Daniel|David|Dennis|Derek|Dylan|Edward|Eric|Ethan|"
             "Frank|Gary|George|Harry|Henry|Ian|Jack|Jacob|James|Jason|Jeff|John|Jonathan|"
             "Joseph|Kevin|Kyle|Liam|Lucas|Mark|Matthew|Michael|Nathan|Neil|Nicholas|Oliver|"
             "Owen|Patrick|Paul|Peter|Philip|Richard|Robert|Ryan|Samuel|Scott|Sean|Simon|"
             "Stephen|T.J.|Thomas|Timothy|Tyler|Victor|Walter|William|Zachary",
        "f": "Abbie|Alice|Amanda|Amy|Anna|Ashley|Barbara|Beth|Bonnie|Brooke|Carla|Caroline|"
             "Chloe|Claire|Dana|Diane|Donna|Elena|Elizabeth|Emily|Emma|Erin|Fiona|Grace|"
             "Hannah|Helen|Holly|Isabel|Jane|Jennifer|Jessica|Julia|Karen|Kate|Laura|Lily|"
             "Lisa|Lucy|Mary Kate|Megan|Molly|Nancy|Natalie|Nora|Olivia|Paula|Rachel|Rebecca|"
             "Renée|Rose|Ruth|Sarah|Sophie|Susan|Tara|Tessa|Valerie|Vanessa|Wendy|Zoë",
        "last": "Adams|Baker|Barnes|Bell|Brooks|Carter|Clarke|Collins|Cooper|Davies|Dixon|"
                "Edwards|Ellis|Evans|Fisher|Fitzgerald|Fletcher|Foster|Graham|Grant|Hale|"
                "Hughes|Hunt|Jenkins|Keller|Kennedy|Lane|Lawson|Marsh|Mason|McAllister|Miller|"
                "Mitchell|Morgan|Murphy|Nolan|O'Brien|O'Connor|O'Neill|Parker|Porter|Quinn|"
                "Reed|Reynolds|Russell|Shaw|Spencer|St. Clair|Stewart|Sullivan|Taylor|Turner|"
                "Van Dyke|Walsh|Ward|Webb|Wells|West|Whitaker|Wilson|Wood|Wright|Young",
    },
    "spanish": {
        "m": "Alejandro|Álvaro|Andrés|Bruno|Carlos|Diego|Eduardo|Emilio|Fernando|Gabriel|"
             "Javier|Jorge|José|Juan Carlos|Luis|Manuel|Miguel|Pablo|Rafael|Raúl|Ricardo|"
             "Sergio|Tomás|Víctor",
        "f": "Alba|Ana|Beatriz|Blanca|Carmen|Cristina|Daniela|Elena|Eva|Fernanda|Gabriela|"
             "Isabel|Laura|Lucía|María José|Marta|Natalia|Paula|Pilar|Rocío|Sofía|Valentina|"
             "Ximena",
        "last": "Álvarez|Castillo|Cruz|de la Fuente|Díaz|Fernández|García|Gómez|González|"
                "Hernández|Jiménez|López|Martínez|Moreno|Muñoz|Navarro|Ortega|Pérez|Ramírez|"
                "Romero|Ruiz|Sánchez|Torres|Vargas",
    },
    "italian": {
        "m": "Alessandro|Andrea|Antonio|Bruno|Claudio|Dario|Davide|Emanuele|Enrico|Fabio|"
             "Francesco|Giacomo|Giorgio|Giovanni|Lorenzo|Luca|Marco|Matteo|Nicola|Paolo|"
             "Pietro|Riccardo|Roberto|Stefano|Tommaso|Vittorio",
        "f": "Alessandra|Alice|Anna|Beatrice|Chiara|Claudia|Elena|Eleonora|Elisa|Federica|"
             "Francesca|Giulia|Ilaria|Laura|Lucia|Martina|Monica|Paola|Sara|Silvia|Valentina",
        "last": "Bianchi|Colombo|Conti|D'Amico|D'Angelo|Esposito|Ferrari|Fontana|Galli|Greco|"
                "Lombardi|Mancini|Marino|Moretti|Ricci|Romano|Rossi|Russo|Santoro|Villa",
    },
    "german": {
        "m": "Andreas|Axel|Benedikt|Bernd|Christian|Christoph|Dieter|Dirk|Erik|Felix|Florian|"
             "Frank|Günther|Hans|Jan|Jörg|Jürgen|Klaus|Lukas|Markus|Matthias|Niklas|Oliver|"
             "Peter|Ralf|Stefan|Thomas|Tobias|Uwe|Wolfgang",
        "f": "Andrea|Anja|Anke|Birgit|Brigitte|Christina|Claudia|Daniela|Doris|Elke|Franziska|"
             "Gabriele|Heike|Ingrid|Julia|Katrin|Lena|Martina|Nina|Petra|Sabine|Sandra|Silke|"
             "Ursula",
        "last": "Bauer|Becker|Braun|Fischer|Hartmann|Hoffmann|Koch|Krüger|Lange|Meyer|Müller|"
                "Neumann|Richter|Schäfer|Schmidt|Schneider|Schulz|Schwarz|von Bülow|Wagner|"
                "Weber|Wolf|Zimmermann",
    },
    "french": {
        "m": "Antoine|Arnaud|Baptiste|Benoît|Cédric|Christophe|Damien|Émile|Étienne|François|"
             "Guillaume|Hugo|Jean-Luc|Jean-Pierre|Julien|Laurent|Louis|Mathieu|Nicolas|"
             "Olivier|Pascal|Philippe|Rémi|Sébastien|Thierry|Vincent|Yves",
        "f": "Amélie|Anaïs|Aurélie|Brigitte|Camille|Céline|Chloé|Delphine|Élodie|Françoise|"
             "Hélène|Isabelle|Juliette|Léa|Manon|Margaux|Marie-Claire|Nathalie|Océane|Pauline|"
             "Sandrine|Sophie|Valérie|Virginie",
        "last": "Bernard|Bonnet|d'Aubigny|Dubois|Durand|Fournier|Garnier|Girard|Lambert|"
                "Laurent|Lefèvre|Leroy|Martin|Mercier|Moreau|Petit|Richard|Robert|Roux|Simon",
    },
    "nordic": {
        "m": "Anders|Arne|Axel|Bjørn|Björn|Christer|Dag|Einar|Emil|Erik|Fredrik|Gustav|Håkan|"
             "Henrik|Jonas|Karl|Lars|Magnus|Mats|Nils|Olav|Ole|Øystein|Per|Rune|Sigurd|Stig|"
             "Sven|Tor|Ulf",
        "f": "Agnes|Anna|Åsa|Astrid|Birgitta|Britt|Camilla|Cecilia|Dagny|Ebba|Elin|Frida|"
             "Hanne|Hedda|Ingrid|Johanna|Karin|Kristin|Linnea|Maja|Marit|Sigrid|Silje|Sofia|"
             "Tone|Tuva",
        "last": "Ågren|Andersson|Åström|Bakken|Berg|Dahl|Eriksson|Hansen|Haugen|Johansen|"
                "Johansson|Karlsson|Larsen|Lindqvist|Lund|Nilsson|Ødegaard|Olsen|Pedersen|"
                "Persson|Solberg|Strand|Svensson",
    },
    "indian": {
        "m": "Aditya|Amit|Arjun|Bhavesh|Chetan|Deepak|Dev|Dhruv|Gaurav|Harish|Karan|Kunal|"
             "Manish|Nikhil|Pranav|Rahul|Rajesh|Rohan|Sanjay|Siddharth|Suresh|Varun|Vikram|"
             "Vivek",
        "f": "Aditi|Aishwarya|Anjali|Bhavna|Chitra|Deepa|Divya|Esha|Gauri|Kavya|Lakshmi|Meera|"
             "Neha|Nisha|Pooja|Priya|Radhika|Riya|Shreya|Sneha|Tanvi|Vidya",
        "last": "Agarwal|Banerjee|Bhat|Chopra|D'Souza|Desai|Ghosh|Gupta|Iyer|Joshi|Kapoor|Khan|"
                "Kumar|Mehta|Menon|Nair|Patel|Rao|Reddy|Shah|Sharma|Singh|Verma",
    },
}

NAMES: dict[str, dict[str, tuple[str, ...]]] = {
    culture: {kind: tuple(s.split("|")) for kind, s in lists.items()}
    for culture, lists in _NAMES.items()
}
